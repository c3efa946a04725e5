"""The package boundary: the HTTP app and the dialects never load the stream processors.

Only ``ingest_gateway.cli`` (the composition root) imports both sides; the app is handed
the processors' parts as the protocols of ``ingest_gateway.ports``. Checked in a fresh
interpreter, so nothing another test imported can hide an import, and by reading the
sources, so a lazy import inside a function is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "ingest_gateway"


def test_app_and_dialects_load_without_stream_processors():
    code = (
        "import sys\n"
        "import ingest_gateway.app, ingest_gateway.ports, ingest_gateway.dialects\n"
        "from ingest_gateway.dialects import base, customerio, forms, retainly, segment, traitly, triggerly\n"
        "loaded = sorted(m for m in sys.modules if m == 'stream_processors' or m.startswith('stream_processors.'))\n"
        "assert not loaded, loaded\n"
        "assert 'ingest_gateway.cli' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_composition_root_imports_stream_processors():
    outside = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if (GATEWAY / "cli") in path.parents:
            continue
        if any(n == "stream_processors" or n.startswith("stream_processors.") for n in _imports(path)):
            outside.append(str(path.relative_to(ROOT)))
    assert not outside, f"import stream_processors outside ingest_gateway/cli/: {outside}"


def test_the_processors_never_import_the_gateway_nor_the_contracts_either_side():
    wrong = []
    for package, forbidden in (("stream_processors", ("ingest_gateway",)), ("schemas", ("ingest_gateway", "stream_processors"))):
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(n.split(".")[0] in forbidden for n in _imports(path)):
                wrong.append(str(path.relative_to(ROOT)))
    assert not wrong, f"imports across the boundary: {wrong}"
