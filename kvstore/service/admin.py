"""Operator commands on a stopped server's data directory.

``kvstore namespace set-owner --data-dir DIR NAME TENANT``: give an ownerless namespace (one
created in development mode) an owner, so that the tenant may use it once the server runs with
credentials (``kvstore.auth.Policy`` refuses ownerless namespaces to everyone). It takes the data
directory's lock, so it refuses to run while a server holds it, and rewrites only the namespace
catalog (atomically); blocks and their ids are untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from kvstore.auth import Tenants
from kvstore.engine.catalog import CATALOG_FILE, Catalog
from kvstore.engine.lockfile import lock_dir
from kvstore.engine.types import NamespaceInfo
from kvstore.errors import InvalidArgument, KVStoreError, NamespaceNotFound
from kvstore.io_uring.posix import PosixDevice


def set_namespace_owner(data_dir: str, name: str, owner: str, *, force: bool = False,
                        tenants: Tenants | None = None) -> NamespaceInfo:
    """Make ``owner`` the owner of namespace ``name``; returns the updated namespace. Refuses
    (InvalidArgument) to take a namespace from another owner unless ``force``, an empty owner,
    and, with ``tenants``, an owner no tenant has."""
    if not owner:
        raise InvalidArgument("the owner must be a tenant name")
    if tenants is not None and not tenants.dev and owner not in tenants.names:
        raise InvalidArgument(f"no tenant {owner!r} in the credentials file")
    if not os.path.isdir(data_dir):
        raise InvalidArgument(f"no data directory {data_dir!r}")
    lock = lock_dir(data_dir)  # DataDirLocked while a server runs on it
    try:
        dev = PosixDevice()
        path = os.path.join(data_dir, CATALOG_FILE)
        cat = Catalog.decode(dev.read_file(path))
        ns_id, info = cat.get(name)
        if info.owner and info.owner != owner and not force:
            raise InvalidArgument(f"namespace {name} is owned by {info.owner!r}; pass --force "
                                  "to give it to another tenant")
        info = dataclasses.replace(info, owner=owner)
        cat.by_name[name] = (ns_id, info)
        dev.write_file_atomic(path, cat.encode())
        return info
    finally:
        lock.release()


def add_namespace_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ns = sub.add_parser("namespace", help="operator commands on a stopped server's namespaces")
    cmds = ns.add_subparsers(dest="ns_command", metavar="NS_COMMAND")
    so = cmds.add_parser(
        "set-owner", help="give a namespace (e.g. one created in development mode) an owner",
        description="Run on the data directory of a stopped server. A namespace without an "
                    "owner is refused to every tenant once the server runs with credentials; "
                    "this assigns one.")
    so.add_argument("--data-dir", required=True, help="the server's data directory")
    so.add_argument("--credentials", help="tenants JSON file: check that TENANT exists")
    so.add_argument("--force", action="store_true",
                    help="also take a namespace that already has another owner")
    so.add_argument("name", metavar="NAME", help="the namespace (bucket)")
    so.add_argument("tenant", metavar="TENANT", help="the tenant name to own it")


def run_namespace_command(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 1 refused (no such namespace, data dir in use, ...), 2 usage."""
    if getattr(args, "ns_command", None) != "set-owner":
        print("kvstore: error: namespace needs a command: set-owner", file=sys.stderr)
        return 2
    try:
        tenants = None if args.credentials is None else Tenants.from_file(args.credentials)
        info = set_namespace_owner(args.data_dir, args.name, args.tenant, force=args.force,
                                   tenants=tenants)
    except NamespaceNotFound:
        print(f"kvstore: error: no namespace {args.name} in {args.data_dir}", file=sys.stderr)
        return 1
    except (KVStoreError, OSError, ValueError) as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr)
        return 1
    print(f"kvstore: namespace {info.name} is now owned by {info.owner}")
    return 0
