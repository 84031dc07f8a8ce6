"""Operator commands on a stopped server's data directory.

``kvstore namespace set-owner --data-dir DIR NAME TENANT``: give an ownerless namespace (one
created in development mode) an owner, so that the tenant may use it once the server runs with
credentials (``kvstore.auth.Policy`` refuses ownerless namespaces to everyone). It takes the data
directory's lock, so it refuses to run while a server holds it, and rewrites only the namespace
catalog (atomically); blocks and their ids are untouched.

``kvstore keygen FILE``: write a random master key (``limits.master_key_bytes``, mode 0600; it
refuses to overwrite a file). ``kvstore rotate-key --old FILE --new FILE --data-dir DIR``:
re-wrap a stopped store's data keys with a new master key (``engine/crypto.py``); no block is
rewritten, and afterwards only the new key opens the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from kvstore import limits
from kvstore.auth import Tenants
from kvstore.engine.catalog import CATALOG_FILE, Catalog
from kvstore.engine.crypto import check_master_key
from kvstore.engine.lockfile import lock_dir
from kvstore.engine.types import NamespaceInfo
from kvstore.errors import InvalidArgument, KVStoreError, MasterKeyError, NamespaceNotFound
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


def write_master_key(path: str) -> None:
    """A new random master key in ``path``, created with mode 0600; FileExistsError if the file
    exists (a key is never overwritten: the store it opens would be lost)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(limits.master_key_bytes))
        f.flush()
        os.fsync(f.fileno())


def read_master_key(path: str) -> bytes:
    """The master key in ``path``. Raises MasterKeyError (unreadable, or not 32 bytes)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limits.master_key_bytes + 1)
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key file {path!r}: {exc}") from None
    return check_master_key(raw)


def rotate_master_key(data_dir: str, old: bytes, new: bytes) -> int:
    """Re-wrap the data keys of the stopped store in ``data_dir`` from ``old`` to ``new``;
    returns how many. Raises MasterKeyError (``old`` is not this store's key), DataDirLocked."""
    if not os.path.isdir(data_dir):
        raise InvalidArgument(f"no data directory {data_dir!r}")
    lock = lock_dir(data_dir)
    try:
        dev = PosixDevice()
        path = os.path.join(data_dir, CATALOG_FILE)
        cat = Catalog.decode(dev.read_file(path))
        if not cat.keys.check:
            raise MasterKeyError(f"the store in {data_dir!r} is not encrypted")
        cat.keys = cat.keys.rewrap(old, new)
        dev.write_file_atomic(path, cat.encode())
        return len(cat.keys.wrapped)
    finally:
        lock.release()


def add_key_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kg = sub.add_parser("keygen", help="write a new random master key (encryption at rest)",
                        description="Writes 32 random bytes to FILE with mode 0600 for "
                                    "`kvstore serve --master-key-file FILE`; never overwrites.")
    kg.add_argument("file", metavar="FILE")
    rk = sub.add_parser("rotate-key", help="re-wrap a stopped store's data keys with a new "
                                           "master key (no block is rewritten)")
    rk.add_argument("--old", required=True, metavar="FILE", help="the current master key file")
    rk.add_argument("--new", required=True, metavar="FILE", help="the new master key file")
    rk.add_argument("--data-dir", required=True, help="the stopped server's data directory")


def run_key_command(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 1 refused (file exists, wrong key, data dir in use, ...)."""
    try:
        if args.command == "keygen":
            write_master_key(args.file)
            print(f"kvstore: wrote a new master key to {args.file} (mode 0600)")
            return 0
        n = rotate_master_key(args.data_dir, read_master_key(args.old),
                              read_master_key(args.new))
    except FileExistsError:
        print(f"kvstore: error: {args.file} exists; a master key is never overwritten",
              file=sys.stderr)
        return 1
    except (KVStoreError, OSError, ValueError) as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr)
        return 1
    print(f"kvstore: {n} data keys of {args.data_dir} re-wrapped with the new master key")
    return 0
