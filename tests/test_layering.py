"""The import direction of DESIGN section 2, enforced by parsing imports with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> the kvstore packages/modules it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "limits": set(),
    "errors": set(),
    "keys": {"limits", "errors"},
    "auth": {"limits", "errors"},
    "service": {"engine", "io_uring", "auth", "cluster", "limits", "errors", "keys"},
    "protocol": {"limits", "errors", "keys"},
    "engine": {"limits", "errors", "keys"},
    "io_uring": {"engine.device", "limits", "errors"},
    "transport": {"protocol", "service", "engine", "io_uring", "limits", "errors", "keys",
                  "auth"},
    "api": {"transport", "service", "engine", "errors", "limits", "keys", "auth"},
    "cluster": {"limits", "errors", "keys"},
    "config": {"limits", "errors"},
    "server": {"api", "transport", "service", "engine", "io_uring", "config", "limits",
               "errors", "auth", "keys", "cluster"},
    "__main__": {"server", "config", "service.admin", "cluster.pod_cli", "limits", "errors"},
}
# The client distribution (clients/) ships without the server: it imports nothing of kvstore.
# What it shares with the server lives in its own kvstore_wire package, which the server's
# protocol, keys, errors and limits re-export.
CLIENT_ALLOWED: set[str] = set()
# server modules that may import kvstore_wire (the re-exports, and the engine's checksum)
WIRE_IMPORTERS = {"limits.py", "errors.py", "keys.py", "engine/format.py",
                  "cluster/placement.py"}
WIRE_IMPORTERS_UNDER = ("protocol/",)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out.extend(f"{node.module}.{a.name}" for a in node.names)
    return [m for m in out if m == "kvstore" or m.startswith("kvstore.")]


def _allowed(target: str, allowed: set[str]) -> bool:
    rest = target[len("kvstore."):] if target.startswith("kvstore.") else ""
    return any(rest == a or rest.startswith(a + ".") for a in allowed)


def test_server_packages_import_only_downward() -> None:
    bad = []
    for path in sorted((ROOT / "kvstore").rglob("*.py")):
        rel = path.relative_to(ROOT / "kvstore")
        part = rel.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        assert part in ALLOWED, f"{rel}: module {part!r} has no layering rule; add one"
        allowed = ALLOWED[part] | {part}
        for target in _imports(path):
            if target == "kvstore":
                continue
            if not _allowed(target, allowed):
                bad.append(f"{rel} imports {target}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def _all_imports(path: Path) -> list[str]:
    """Every module an import statement names, relative ones resolved to their package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = path.parent.name
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "") if not node.level else f"{pkg}.{node.module or ''}")
    return out


def test_wire_package_is_sans_io_and_knows_no_server() -> None:
    """kvstore_wire: no asyncio, no socket, nothing of kvstore or of the SDK."""
    bad = []
    for path in sorted((ROOT / "clients" / "kvstore_wire").rglob("*.py")):
        for target in _all_imports(path):
            top = target.split(".")[0]
            if top in ("asyncio", "socket", "selectors", "kvstore", "kvstore_client"):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not bad, "kvstore_wire violations:\n" + "\n".join(bad)


def test_server_imports_the_wire_package_only_through_its_re_exports() -> None:
    bad = []
    for path in sorted((ROOT / "kvstore").rglob("*.py")):
        rel = path.relative_to(ROOT / "kvstore").as_posix()
        for target in _all_imports(path):
            top = target.split(".")[0]
            if top == "kvstore_client":
                bad.append(f"kvstore/{rel} imports the SDK ({target})")
            elif top == "kvstore_wire" and not (rel in WIRE_IMPORTERS
                                                or rel.startswith(WIRE_IMPORTERS_UNDER)):
                bad.append(f"kvstore/{rel} imports {target}: use kvstore.protocol/limits/...")
    assert not bad, "\n".join(bad)


def test_clients_import_no_server_internals() -> None:
    bad = []
    for path in sorted((ROOT / "clients").rglob("*.py")):
        for target in _imports(path):
            if target != "kvstore" and not _allowed(target, CLIENT_ALLOWED):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
        text = path.read_text()
        for forbidden in ("import fastapi", "import pyuring", "from fastapi", "from pyuring",
                          "import uvicorn", "from uvicorn", "import prometheus_client"):
            if forbidden in text:
                bad.append(f"{path.relative_to(ROOT)}: {forbidden}")
    assert not bad, "client layering violations:\n" + "\n".join(bad)
