"""``kvstore.limits`` checks the relations between its bounds when it is imported, and every
bound it names is used by the code (enforced somewhere), not only documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMITS = ROOT / "kvstore" / "limits.py"
WIRE_LIMITS = ROOT / "clients" / "kvstore_wire" / "limits.py"


def _run_with(name: str, value: str) -> None:
    """Execute kvstore/limits.py with ``name`` set to ``value`` (its own line replaced)."""
    src = LIMITS.read_text()
    new, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", src, count=1, flags=re.M)
    assert n == 1, f"{name} is not assigned on a line of its own in limits.py"
    exec(compile(new, str(LIMITS), "exec"), {"__name__": "limits_under_test"})


def test_the_shipped_bounds_hold_their_relations() -> None:
    _run_with("uring_entries", "64")  # the file as shipped (one line rewritten to itself)


@pytest.mark.parametrize(("name", "value"), [
    ("segment_bytes_default", "32 * MiB"),  # a maximal block and its header page do not fit
    ("segment_bytes_default", "256 * MiB + 100"),  # not whole pages
    ("capacity_low_watermark", "0.97"),  # above the high watermark
    ("s3_user_metadata_bytes_max", "4 * KiB"),  # the header page cannot hold it
    ("delete_objects_max", "10_000"),  # more than one batched delete may carry
    ("control_body_bytes_max", "1 * MiB"),  # a full batch of maximal keys does not fit
    ("write_buffer_low_bytes", "16 * MiB"),  # low water mark above the high one
    ("uring_entries", "48"),  # not a power of two
    ("body_rate_grace_seconds_default", "20.0"),  # grace longer than the rate window
    ("http_keepalive_timeout_seconds_default", "20.0"),  # keep-alive past the header deadline
    ("dram_bytes_default", "16 * MiB"),  # smaller than one maximal block
    ("nixl_staging_chunks", "0"),
])
def test_a_bound_that_breaks_a_relation_fails_the_import(name: str, value: str) -> None:
    with pytest.raises(AssertionError):
        _run_with(name, value)


def _bounds(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [t.id for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)]


def test_every_bound_is_used_outside_the_limits_modules() -> None:
    sources = [p for top in ("kvstore", "clients") for p in (ROOT / top).rglob("*.py")
               if p not in (LIMITS, WIRE_LIMITS)]
    text = "\n".join(p.read_text() for p in sources)
    unused = [name for name in _bounds(LIMITS) + _bounds(WIRE_LIMITS)
              if name not in ("KiB", "MiB", "GiB") and not re.search(rf"\b{name}\b", text)]
    assert not unused, f"bounds nothing enforces (enforce or remove them): {unused}"
