"""docs/SECURITY.md lists every bound the server and the wire enforce (docs match code): its
"Every bound" section is what tools/bounds_doc.py generates from the limits modules now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kvstore_wire import limits as wire_limits

from kvstore import limits

ROOT = Path(__file__).resolve().parents[1]


def _bounds(module: object) -> set[str]:
    return {n for n, v in vars(module).items()
            if n.islower() and not n.startswith("_") and isinstance(v, int | float)
            and not isinstance(v, bool)}


def test_the_bounds_section_is_current() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "bounds_doc.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_bound_is_in_security_md() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    missing = sorted(n for n in _bounds(limits) | _bounds(wire_limits) if f"`{n}`" not in text)
    assert not missing, f"docs/SECURITY.md does not list: {missing}"
