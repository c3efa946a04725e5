#!/bin/sh
# The `goalstream import` benchmark (issue 14): 1M Segment JSONL lines into a running
# `goalstream up`; prints records/s, the import's peak RSS, and the events count before,
# after the first run, and after a re-run (which must store 0 new rows).
#
#   sh tests/bench/import_bench.sh [LINES] [WORKDIR]
#
# Measured 2026-12-03 (2 shared cores, other jobs running; the import got ~16% CPU, so it
# waited on the machine, not on itself): 1,000,000 lines (138 MB, 10% identify) -> first run
# 315 s, 3,174 records/s, peak RSS 73 MB; events 0 -> 899,966 (= the non-identify lines);
# re-run with --restart 278 s, 3,591 records/s, peak RSS 74 MB; events still 899,966.
# Needs .venv (make install) and GNU time (/usr/bin/time). The data is generated, never committed.
set -eu
N=${1:-1000000}
W=${2:-/tmp/goalstream-import-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
G="$ROOT/.venv/bin/goalstream"
mkdir -p "$W"; cd "$W"; rm -rf var
[ -f "segment-$N.jsonl" ] || "$ROOT/.venv/bin/python" "$ROOT/tests/bench/import_gen.py" "$N" "segment-$N.jsonl"
"$G" up --port 18914 --kafka-port 19914 > up.log 2>&1 &
UP=$!
trap 'kill $UP; wait $UP' EXIT
until grep -q "goalstream ready" up.log; do sleep 1; done
count() { "$G" sql "SELECT count() FROM events" --format TSV; }
settle() { prev=-1; cur=$(count); while [ "$cur" != "$prev" ]; do sleep 10; prev=$cur; cur=$(count); done; echo "$cur"; }
echo "before: $(count)"
/usr/bin/time -v "$G" import "segment-$N.jsonl" 2> run1.err || true
grep -E "lines read|records/s$|Maximum resident" run1.err
echo "after first run (settled): $(settle)"
/usr/bin/time -v "$G" import --restart "segment-$N.jsonl" 2> run2.err || true
grep -E "lines read|records/s$|Maximum resident" run2.err
echo "after re-run (settled): $(settle)"
