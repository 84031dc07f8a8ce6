"""The may-import rules of the layout (``tests/layering.py``) hold on this tree, and the check
catches each kind of violation: each case plants one in a copy of the tree and expects exactly
that violation to be reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import layering
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_this_tree_holds_the_layering_rules() -> None:
    bad = layering.check(ROOT)
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_every_departure_is_still_needed() -> None:
    """A recorded exception that no module uses any more is removed, so it cannot hide a new
    import later."""
    saved = dict(layering.DEPARTURES)
    try:
        for key in saved:
            layering.DEPARTURES.clear()
            layering.DEPARTURES.update({k: v for k, v in saved.items() if k != key})
            assert layering.check(ROOT), f"departure {key} is not needed any more: remove it"
    finally:
        layering.DEPARTURES.clear()
        layering.DEPARTURES.update(saved)
    for (rel, top) in layering.FORBIDDEN_DEPARTURES:
        path = ROOT / rel
        assert path.exists() and any(t.split(".")[0] == top
                                     for t in layering.imports(ROOT, path)), (
            f"forbidden-import departure {(rel, top)} is not needed any more: remove it")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the Python sources of kvstore/ and clients/ (shared by the cases below, each
    of which restores the file it changed)."""
    root = tmp_path_factory.mktemp("tree")
    for top in ("kvstore", "clients"):
        shutil.copytree(ROOT / top, root / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    assert layering.check(root) == []
    return root


# (file to plant in, line to add, a fragment of the one violation expected)
PLANTED = [
    # upward / sideways imports, absolute
    ("kvstore/limits.py", "from kvstore import errors", "kvstore/limits.py imports kvstore.errors"),
    ("kvstore/keys.py", "import kvstore.auth", "kvstore/keys.py imports kvstore.auth"),
    ("kvstore/auth.py", "from kvstore.engine.store import Engine",
     "kvstore/auth.py imports kvstore.engine.store"),
    ("kvstore/engine/index.py", "from kvstore.service import Node",
     "kvstore/engine/index.py imports kvstore.service"),
    ("kvstore/protocol/frames.py", "from kvstore.transport import bulk_conn",
     "kvstore/protocol/frames.py imports kvstore.transport"),
    ("kvstore/service/blocks.py", "from kvstore.api import errors",
     "kvstore/service/blocks.py imports kvstore.api"),
    # the edges may not reach the engine directly (beyond the recorded departures)
    ("kvstore/transport/bulk_ops.py", "from kvstore.engine.store import Engine",
     "kvstore/transport/bulk_ops.py imports kvstore.engine.store"),
    ("kvstore/api/s3/app.py", "from kvstore.engine import reclaim",
     "kvstore/api/s3/app.py imports kvstore.engine.reclaim"),
    # relative imports are resolved and held to the same rules
    ("kvstore/engine/index.py", "from ..service import node",
     "kvstore/engine/index.py imports kvstore.service"),
    ("kvstore/transport/shm.py", "from ..engine import store",
     "kvstore/transport/shm.py imports kvstore.engine.store"),
    ("kvstore/api/s3/objects.py", "from ...engine.recovery import recover",
     "kvstore/api/s3/objects.py imports kvstore.engine.recovery"),
    ("kvstore/keys.py", "from . import config", "kvstore/keys.py imports kvstore.config"),
    # a new top-level module needs a rule
    ("kvstore/newthing.py", "X = 1", "package 'newthing' has no layering rule"),
    # no asyncio in the synchronous floors, no asyncio/socket in the sans-IO protocol
    ("kvstore/engine/store.py", "import asyncio", "no asyncio under kvstore/engine/"),
    ("kvstore/io_uring/posix.py", "from asyncio import get_running_loop",
     "no asyncio under kvstore/io_uring/"),
    ("kvstore/protocol/state.py", "import asyncio", "no asyncio under kvstore/protocol/"),
    ("kvstore/protocol/decoder.py", "import socket", "no socket under kvstore/protocol/"),
    ("clients/kvstore_wire/frames.py", "import socket", "no socket under clients/kvstore_wire/"),
    ("clients/kvstore_wire/state.py", "import asyncio",
     "no asyncio under clients/kvstore_wire/"),
    # the client distribution ships without the server; the wire package without the SDK
    ("clients/kvstore_client/client.py", "from kvstore.engine import store",
     "clients/kvstore_client/client.py imports kvstore.engine"),
    ("clients/kvstore_client/aio.py", "import fastapi", "clients/kvstore_client/aio.py imports"),
    ("clients/kvstore_wire/messages.py", "from kvstore_client import client",
     "kvstore_wire knows nothing of the SDK"),
    ("clients/kvstore_wire/keys.py", "from .. import kvstore_client",
     "kvstore_wire knows nothing of the SDK"),
    # the server reaches the wire package only through its re-exports, never the SDK
    ("kvstore/transport/bulk_conn.py", "from kvstore_wire import frames",
     "use kvstore.protocol/limits"),
    ("kvstore/api/control.py", "import kvstore_client", "imports the SDK"),
]


@pytest.mark.parametrize(("rel", "line", "expected"), PLANTED,
                         ids=[f"{r}:{line}" for r, line, _ in PLANTED])
def test_a_planted_violation_is_caught(tree: Path, rel: str, line: str, expected: str) -> None:
    path = tree / rel
    old = path.read_text() if path.exists() else None
    path.write_text((old or "") + f"\n{line}\n")
    try:
        bad = layering.check(tree)
    finally:
        if old is None:
            path.unlink()
        else:
            path.write_text(old)
    assert len(bad) >= 1 and all(rel in b for b in bad), bad
    assert any(expected in b for b in bad), bad
