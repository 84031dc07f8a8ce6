"""Command line: ``kvstore serve`` (also ``python -m kvstore serve``) and the operator command
``kvstore namespace set-owner --data-dir DIR NAME TENANT`` (run on a stopped server's data dir),
``kvstore keygen FILE`` and ``kvstore rotate-key --old FILE --new FILE --data-dir DIR``
(encryption at rest: ``kvstore.service.admin``),
and ``kvstore pod up --nodes N`` / ``kvstore pod status --etcd URL`` (``kvstore.cluster.pod_cli``).

Exit status: 0 after a clean stop, 1 when the server cannot start (port in use, store cannot be
opened, data directory held by another process), 2 for invalid configuration (including a non-loopback address without credentials).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kvstore.config import ConfigError, add_serve_arguments, resolve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvstore", description="kvstore: KV-cache block store")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the S3 + /v1 HTTP server and the bulk server",
                           description="Flags beat KVSTORE_* environment variables, which beat "
                                       "the --config TOML file, which beats the defaults.")
    add_serve_arguments(serve)
    from kvstore.service.admin import add_key_arguments, add_namespace_arguments

    add_namespace_arguments(sub)
    add_key_arguments(sub)
    from kvstore.cluster.pod_cli import add_pod_arguments

    add_pod_arguments(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "namespace":
        from kvstore.service.admin import run_namespace_command

        return run_namespace_command(args)
    if args.command in ("keygen", "rotate-key"):
        from kvstore.service.admin import run_key_command

        return run_key_command(args)
    if args.command == "pod":
        from kvstore.cluster.pod_cli import run_pod_command

        return run_pod_command(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        cfg = resolve(args, os.environ)
    except ConfigError as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr, flush=True)
        return 2
    from kvstore.server import run  # imports the engine and the HTTP stack only to serve

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
