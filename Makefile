# make run | make check | make test | make install | make hostile | make faults | make bench | make bench-quick  (see README.md)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser run check test hostile faults bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@exec $(BIN)/goalstream up

# The fast lane: unit tests and the golden fixtures' contract lane (no broker, no stack);
# everything under tests/integration, tests/hostile and tests/faults is left to `make test`.
check: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not integration"

# The headless browser of the live-page test (Debian's chromium): installed when run as root
# with apt; otherwise that one test is skipped, saying why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } || \
	  echo "chromium is not installed: tests/integration/test_live_pages.py will be skipped"; }

# The full suite (CI runs it).
test: $(STAMP) browser
	$(BIN)/python -m pytest -ra

# The hostile-input suite alone (it is part of `make test` too): a live stack attacked from outside.
hostile: $(STAMP)
	$(BIN)/python -m pytest -ra tests/hostile

# The fault suite alone (part of `make test` too): goalstream up under load, its processes killed from outside.
faults: $(STAMP)
	$(BIN)/python -m pytest -ra tests/faults

# Then training at scale (issue 16): goalstream train on 200,000 customers x 20 event kinds,
# ClickHouse features against the previous path (tests/bench/train_scale.py; about 10 minutes).
bench: $(STAMP)
	$(BIN)/python tests/bench/run_bench.py
	$(BIN)/python tests/bench/train_scale.py --json bench-results/train_scale.json

# Every section of the bench, small (a few minutes): to check the bench itself, not to quote figures.
bench-quick: $(STAMP)
	$(BIN)/python tests/bench/run_bench.py --rounds 1 --baseline-duration 3 --duration 3 \
		--drain-events 30000 --slow-events 40 --fast-seconds 4
	$(BIN)/python tests/bench/train_scale.py --customers 20000

clean:
	rm -rf $(VENV) var
