"""The may-import rules of the layout (``docs/ARCHITECTURE.md``, "Layering"), as a function of a
source tree: ``check(root)`` parses every module under ``root/kvstore`` and ``root/clients``
with ``ast`` and returns the violations, relative imports resolved like absolute ones.

``tests/test_layering.py`` runs it on this tree (no violations) and on copies with one planted
violation of each kind (exactly that one is reported).
"""

from __future__ import annotations

import ast
from pathlib import Path

# package (first part under kvstore/) -> the kvstore packages/modules it may import, besides
# itself. The rules of the target layout, with today's departures listed in DEPARTURES.
ALLOWED: dict[str, set[str]] = {
    "limits": set(),
    "errors": set(),
    "keys": {"limits", "errors"},
    "auth": {"limits", "errors", "keys"},  # the tenant-salt rule (keys.salted_tenant_salt)
    "config": {"limits", "errors"},
    "engine": {"limits", "errors", "keys"},
    "io_uring": {"limits", "errors", "keys"},  # the layout's devices/ ...
    "devices": {"limits", "errors", "keys"},  # ... under the name it will have
    "protocol": {"limits", "errors", "keys"},
    "cluster": {"limits", "errors", "keys"},
    "service": {"engine", "io_uring", "devices", "auth", "cluster", "limits", "errors", "keys"},
    "transport": {"protocol", "service", "auth", "limits", "errors", "keys"},
    "api": {"protocol", "service", "auth", "limits", "errors", "keys"},
    "testing": {"service", "engine", "auth", "transport", "g4", "limits", "errors", "keys"},
    # the G4 tier (issue 13): the engine's LowerTier over an object store; built by the server
    "g4": {"engine", "limits", "errors", "keys"},
    "testing_s3": {"limits", "errors"},  # a loopback SeaweedFS for tests and loadtests
    "testing_http": set(),  # an in-memory transport for driving the HTTP protocol
    "server": {"api", "transport", "service", "engine", "io_uring", "devices", "protocol", "cluster",
               "config", "auth", "g4", "limits", "errors", "keys"},
    "__main__": {"server", "config", "service.admin", "cluster.pod_cli", "limits", "errors"},
}

# Where today's code still departs from the layout: (importing package, imported module). Each
# is a debt with its reason; remove the entry when the code stops needing it.
DEPARTURES: dict[tuple[str, str], str] = {
    # The Device ABC, IoOp, ALIGN and the aligned buffers live in engine/device.py; the
    # io_uring/posix/select devices implement them. The layout moves them to devices/ (or the
    # ABC stays in the engine and devices/ may import it): decided with the engine split.
    ("io_uring", "engine.device"): "devices implement the engine's Device ABC",
    # The bulk port and the S3 app receive payloads into page-aligned pool buffers
    # (BufferPool, AlignedBuffer, StagedPayload, align_up) that the engine writes in place: the
    # buffer types belong with the devices, or re-exported by the service.
    ("transport", "engine.device"): "aligned receive buffers handed to the engine",
    ("api", "engine.device"): "aligned receive buffers handed to the engine",
    # shm registers a client's region by address with the same helper the devices use.
    ("transport", "io_uring.buffers"): "buffer_address of a mapped region",
    # Result types the HTTP edge reads: NamespaceInfo (/v1), BlockMeta (S3 heads, listing),
    # BlockView (S3 GET streams a lease's view). They belong in a service types module.
    ("api", "engine.types"): "NamespaceInfo, BlockMeta",
    ("api", "engine.store.BlockView"): "the view a read lease holds",
    # The HTTP guard times request bodies with the bulk port's body watch (one implementation
    # of the slow-body rule): it belongs in a shared module below both edges.
    ("api", "transport.watchdog"): "BodyLimits/BodyWatch shared with the bulk port",
}

# No asyncio in the synchronous floors; no asyncio and no socket in the sans-IO protocol.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "kvstore/engine/": ("asyncio",),
    "kvstore/io_uring/": ("asyncio",),
    "kvstore/devices/": ("asyncio",),
    "kvstore/protocol/": ("asyncio", "socket", "selectors"),
    "clients/kvstore_wire/": ("asyncio", "socket", "selectors"),
}
# ...and where that rule is broken today, with the reason (remove when fixed).
FORBIDDEN_DEPARTURES: dict[tuple[str, str], str] = {
    # UringDevice.submit_async (one ring on the event loop's thread) is being removed on the
    # io_uring -> devices branch; then this entry goes.
    ("kvstore/io_uring/uring.py", "asyncio"): "UringDevice.submit_async",
}

# server modules that may import kvstore_wire (the re-exports, and the engine's checksum)
WIRE_IMPORTERS = {"limits.py", "errors.py", "keys.py", "engine/format.py",
                  "cluster/placement.py", "service/forward.py"}
# server modules that may import the SDK: any-node access forwards a request to the block's
# owner over its bulk port with the SDK's own AsyncClient and circuit breaker (one client
# implementation of the bulk protocol, not a second one inside the server)
SDK_IMPORTERS = {"service/forward.py"}
WIRE_IMPORTERS_UNDER = ("protocol/",)
# what the client distribution may never import (the server's own dependencies)
CLIENT_FORBIDDEN_TOPS = ("kvstore", "fastapi", "uvicorn", "pyuring", "prometheus_client",
                         "starlette")


def module_name(root: Path, path: Path) -> str:
    """``kvstore/transport/bulk_ops.py`` -> ``kvstore.transport.bulk_ops`` (``clients/`` is a
    source root of its own: ``clients/kvstore_wire/frames.py`` -> ``kvstore_wire.frames``)."""
    rel = path.relative_to(root)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "clients":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(root: Path, path: Path) -> list[str]:
    """Every module an import names, relative ones resolved, plus ``module.name`` for each name
    of a ``from module import name`` (which may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(root, path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if node.module:
                out.append(module)
            out.extend(f"{module}.{a.name}".lstrip(".") for a in node.names if a.name != "*")
    return out


def _covered(rest: str, allowed: set[str]) -> bool:
    return any(rest == a or rest.startswith(a + ".") for a in allowed)


def _server_rules(root: Path, path: Path) -> list[str]:
    rel = path.relative_to(root / "kvstore")
    part = rel.parts[0].removesuffix(".py")
    if part == "__init__":
        return []
    if part not in ALLOWED:
        return [f"kvstore/{rel.as_posix()}: package {part!r} has no layering rule; add one"]
    allowed = ALLOWED[part] | {part}
    departures = {mod for (pkg, mod) in DEPARTURES if pkg == part}
    bad = []
    for target in imports(root, path):
        if target != "kvstore" and target.startswith("kvstore."):
            rest = target[len("kvstore."):]
            # ``from kvstore.engine import store`` names kvstore.engine and kvstore.engine.store:
            # a package is covered when a departure names one of its modules
            if not (_covered(rest, allowed) or _covered(rest, departures)
                    or any(d.startswith(rest + ".") for d in departures)):
                bad.append(f"kvstore/{rel.as_posix()} imports {target}")
        top = target.split(".")[0]
        rel_s = rel.as_posix()
        if top == "kvstore_client" and rel_s not in SDK_IMPORTERS:
            bad.append(f"kvstore/{rel_s} imports the SDK ({target})")
        elif top == "kvstore_wire" and not (rel_s in WIRE_IMPORTERS
                                            or rel_s.startswith(WIRE_IMPORTERS_UNDER)):
            bad.append(f"kvstore/{rel_s} imports {target}: use kvstore.protocol/limits/...")
    return bad


def _client_rules(root: Path, path: Path) -> list[str]:
    rel = path.relative_to(root).as_posix()
    bad = []
    wire = rel.startswith("clients/kvstore_wire/")
    for target in imports(root, path):
        top = target.split(".")[0]
        if top in CLIENT_FORBIDDEN_TOPS:
            bad.append(f"{rel} imports {target}: the client distribution ships without the "
                       "server")
        elif wire and top == "kvstore_client":
            bad.append(f"{rel} imports {target}: kvstore_wire knows nothing of the SDK")
    return bad


def _forbidden(root: Path, path: Path) -> list[str]:
    rel = path.relative_to(root).as_posix()
    bad = []
    for prefix, tops in FORBIDDEN.items():
        if not rel.startswith(prefix):
            continue
        for target in imports(root, path):
            top = target.split(".")[0]
            if top in tops and (rel, top) not in FORBIDDEN_DEPARTURES:
                bad.append(f"{rel} imports {target}: no {top} under {prefix}")
    return bad


def check(root: Path) -> list[str]:
    """All layering violations of the tree at ``root`` (empty when it holds the rules)."""
    bad: list[str] = []
    for path in sorted((root / "kvstore").rglob("*.py")):
        bad += _server_rules(root, path)
        bad += _forbidden(root, path)
    for path in sorted((root / "clients").rglob("*.py")):
        bad += _client_rules(root, path)
        bad += _forbidden(root, path)
    return bad
