"""docs/SECURITY.md lists every bound the server and the wire enforce (docs match code)."""

from __future__ import annotations

from pathlib import Path

from kvstore_wire import limits as wire_limits

from kvstore import limits

DOC = Path(__file__).resolve().parents[1] / "docs" / "SECURITY.md"


def _bounds(module: object) -> set[str]:
    return {n for n, v in vars(module).items()
            if n.islower() and not n.startswith("_") and isinstance(v, int | float)
            and not isinstance(v, bool)}


def test_every_bound_is_in_security_md() -> None:
    text = DOC.read_text()
    missing = sorted(n for n in _bounds(limits) | _bounds(wire_limits) if f"`{n}`" not in text)
    assert not missing, f"docs/SECURITY.md does not list: {missing}"
