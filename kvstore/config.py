"""`kvstore serve` configuration: resolved once, frozen, passed down.

Sources, highest precedence first: command-line flag, ``KVSTORE_*`` environment variable, TOML
config file (``--config`` / ``KVSTORE_CONFIG``), built-in default. ``resolve()`` reads all of them
exactly once and returns a ``ServeConfig``; nothing below the CLI reads flags, environment or
config files again.

Sizes accept plain byte counts and binary or decimal-looking units, all binary: ``123``,
``512KiB``, ``512MiB``, ``10GiB``, ``1G``, ``1.5TiB`` (``K``/``KB``/``KiB`` all mean 1024).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kvstore import limits


class ConfigError(ValueError):
    """A configuration value is invalid. The CLI prints it and exits with status 2."""


DEVICES = ("auto", "uring", "posix", "memory")
ETAGS = ("md5", "xxh3")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_UNITS = {
    "": 1, "b": 1,
    "k": limits.KiB, "kb": limits.KiB, "kib": limits.KiB,
    "m": limits.MiB, "mb": limits.MiB, "mib": limits.MiB,
    "g": limits.GiB, "gb": limits.GiB, "gib": limits.GiB,
    "t": 1024 * limits.GiB, "tb": 1024 * limits.GiB, "tib": 1024 * limits.GiB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
# Sizes past this are typos, not disks (1 PiB).
_SIZE_MAX = 1024 * 1024 * limits.GiB
# Pod and node names: they become etcd key segments.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_DOMAIN_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_size(value: str | int, *, what: str = "size") -> int:
    """Bytes from ``123``, ``512MiB``, ``10GiB``, ``1G`` (binary units, case-insensitive)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(
                f"{what}: cannot parse size {value!r} (examples: 123, 512MiB, 10GiB, 1G)")
        number, unit = m.group(1), _UNITS[m.group(2).lower()]
        if "." in number:
            n = int(float(number) * unit)
        else:
            n = int(number) * unit
    if n < 0:
        raise ConfigError(f"{what}: size must not be negative")
    if n > _SIZE_MAX:
        raise ConfigError(f"{what}: size {value!r} is larger than 1 PiB")
    return n


def format_size(n: int) -> str:
    for unit, mult in (("GiB", limits.GiB), ("MiB", limits.MiB), ("KiB", limits.KiB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class G4Config:
    """The G4 tier's object store, resolved once here (flags, file, AWS environment)."""

    bucket: str
    prefix: str
    endpoint: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    spill_bytes_per_second: int = limits.g4_spill_bytes_per_second_default


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything `kvstore serve` needs, after precedence and validation."""

    host: str = "127.0.0.1"
    port: int = 8700
    bulk_port: int = 8701
    data_dir: str = "./data"
    capacity_bytes: int = 10 * limits.GiB
    dram_bytes: int = limits.dram_bytes_default
    segment_bytes: int = limits.segment_bytes_default
    # Flash bytes lookup leases may pin at once; None: a fraction of the capacity (limits.py).
    lease_budget_bytes: int | None = None
    device: str = "auto"
    credentials: str | None = None
    # TLS on the TCP listeners (kvstore.transport.tls): both or neither; a client CA: mutual TLS
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # kvstore_namespace_* series on the unsigned /metrics; None: only in development mode
    metrics_namespaces: bool | None = None
    log_level: str = "info"
    shutdown_seconds: float = limits.shutdown_seconds_max
    access_log: bool = False
    # connection bounds (kvstore.limits, "Connection timeouts")
    connections_max: int = limits.connections_max
    # authenticated connections one tenant may hold per listener (kvstore.service.conn_caps)
    tenant_connections_max: int | None = None  # None: --max-connections
    probe_connections: int = limits.probe_connections_reserved_default
    http_header_timeout_seconds: float = limits.http_header_timeout_seconds_default
    http_keepalive_timeout_seconds: float = limits.http_keepalive_timeout_seconds_default
    body_idle_timeout_seconds: float = limits.body_idle_timeout_seconds_default
    body_min_rate_bytes_per_second: int = limits.body_min_rate_bytes_per_second_default
    body_rate_window_seconds: float = limits.body_rate_window_seconds_default
    body_rate_grace_seconds: float = limits.body_rate_grace_seconds_default
    bulk_handshake_timeout_seconds: float = limits.bulk_handshake_timeout_seconds_default
    bulk_idle_timeout_seconds: float = limits.bulk_idle_timeout_seconds_default
    # the pod (kvstore.cluster): membership from etcd (pod + etcd) or a static --peers file
    pod: str | None = None
    etcd: str | None = None  # comma-separated etcd client URLs
    node_id: str | None = None  # default: ADVERTISE:PORT
    advertise: str | None = None  # the host other nodes and clients reach; default --host
    peers: str | None = None
    etcd_lease_ttl_seconds: float = limits.etcd_lease_ttl_seconds_default
    etcd_timeout_seconds: float = limits.etcd_call_timeout_seconds_default
    forward_timeout_seconds: float = limits.forward_timeout_seconds_default
    engine_timeout_seconds: float = limits.engine_call_timeout_seconds_default
    # S3 virtual-host-style addressing: BUCKET.DOMAIN in the Host header names the bucket
    domain: str | None = None
    # S3 ETags: "md5" as S3 computes them; "xxh3" (opt-in) skips the MD5 pass for bulk-only
    # deployments and breaks sync tools (aws s3 sync, rclone) that compare ETags with MD5s
    etag: str = "md5"
    previous_owner_read: bool = True  # a read that misses at the replicas asks the next node
    # engine integrations (issue 11): the Redis-protocol listener and KV events for routers
    resp_port: int | None = None  # None: no Redis listener
    resp_namespace: str = "default"
    resp_idle_timeout_seconds: float = limits.bulk_idle_timeout_seconds_default
    kv_events: str | None = None  # ZMQ endpoint the KV-event publisher binds
    # G4 (issue 13): cold blocks spill to an S3-compatible object store; resolved into ``g4``
    g4_url: str | None = None  # s3://BUCKET/PREFIX
    g4_endpoint: str | None = None
    g4_credentials: str | None = None  # file; else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    g4_region: str | None = None  # else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    g4_spill_bytes_per_second: int = limits.g4_spill_bytes_per_second_default
    g4: G4Config | None = field(default=None, compare=False, repr=False)
    # encryption at rest: the master key file (`kvstore keygen`) and its 32 bytes, read once here
    master_key_file: str | None = None
    master_key: bytes | None = field(default=None, repr=False, compare=False)
    config_file: str | None = field(default=None, compare=False)

    @property
    def dev_mode(self) -> bool:
        return self.credentials is None


# name -> (flag, env var, kind). Kind drives parsing; the TOML key is the name with '_' or '-'.
_OPTIONS: dict[str, tuple[str, str, str]] = {
    "host": ("--host", "KVSTORE_HOST", "str"),
    "port": ("--port", "KVSTORE_PORT", "port"),
    "bulk_port": ("--bulk-port", "KVSTORE_BULK_PORT", "port"),
    "data_dir": ("--data-dir", "KVSTORE_DATA_DIR", "path"),
    "capacity_bytes": ("--capacity", "KVSTORE_CAPACITY", "size"),
    "dram_bytes": ("--dram", "KVSTORE_DRAM", "size"),
    "segment_bytes": ("--segment-size", "KVSTORE_SEGMENT_SIZE", "size"),
    "lease_budget_bytes": ("--lease-budget", "KVSTORE_LEASE_BUDGET", "size"),
    "device": ("--device", "KVSTORE_DEVICE", "device"),
    "credentials": ("--credentials", "KVSTORE_CREDENTIALS", "path"),
    "tls_cert": ("--tls-cert", "KVSTORE_TLS_CERT", "path"),
    "tls_key": ("--tls-key", "KVSTORE_TLS_KEY", "path"),
    "tls_client_ca": ("--tls-client-ca", "KVSTORE_TLS_CLIENT_CA", "path"),
    "metrics_namespaces": ("--metrics-namespaces", "KVSTORE_METRICS_NAMESPACES", "bool"),
    "log_level": ("--log-level", "KVSTORE_LOG_LEVEL", "level"),
    "shutdown_seconds": ("--shutdown-seconds", "KVSTORE_SHUTDOWN_SECONDS", "seconds"),
    "access_log": ("--access-log", "KVSTORE_ACCESS_LOG", "bool"),
    "connections_max": ("--max-connections", "KVSTORE_MAX_CONNECTIONS", "count"),
    "tenant_connections_max": ("--max-connections-per-tenant",
                               "KVSTORE_MAX_CONNECTIONS_PER_TENANT", "count"),
    "probe_connections": ("--probe-connections", "KVSTORE_PROBE_CONNECTIONS", "count"),
    "http_header_timeout_seconds": ("--http-header-timeout", "KVSTORE_HTTP_HEADER_TIMEOUT",
                                    "timeout"),
    "http_keepalive_timeout_seconds": ("--http-keepalive-timeout",
                                       "KVSTORE_HTTP_KEEPALIVE_TIMEOUT", "timeout"),
    "body_idle_timeout_seconds": ("--body-timeout", "KVSTORE_BODY_TIMEOUT", "timeout"),
    "body_min_rate_bytes_per_second": ("--body-min-rate", "KVSTORE_BODY_MIN_RATE", "size"),
    "body_rate_window_seconds": ("--body-rate-window", "KVSTORE_BODY_RATE_WINDOW", "timeout"),
    "body_rate_grace_seconds": ("--body-rate-grace", "KVSTORE_BODY_RATE_GRACE", "timeout"),
    "bulk_handshake_timeout_seconds": ("--bulk-handshake-timeout",
                                       "KVSTORE_BULK_HANDSHAKE_TIMEOUT", "timeout"),
    "bulk_idle_timeout_seconds": ("--bulk-idle-timeout", "KVSTORE_BULK_IDLE_TIMEOUT", "timeout"),
    "pod": ("--pod", "KVSTORE_POD", "name"),
    "etcd": ("--etcd", "KVSTORE_ETCD", "str"),
    "node_id": ("--node-id", "KVSTORE_NODE_ID", "name"),
    "advertise": ("--advertise", "KVSTORE_ADVERTISE", "str"),
    "peers": ("--peers", "KVSTORE_PEERS", "path"),
    "etcd_lease_ttl_seconds": ("--etcd-lease-ttl", "KVSTORE_ETCD_LEASE_TTL", "lease_ttl"),
    "etcd_timeout_seconds": ("--etcd-timeout", "KVSTORE_ETCD_TIMEOUT", "etcd_timeout"),
    "forward_timeout_seconds": ("--forward-timeout", "KVSTORE_FORWARD_TIMEOUT", "forward_timeout"),
    "engine_timeout_seconds": ("--engine-timeout", "KVSTORE_ENGINE_TIMEOUT", "timeout"),
    "domain": ("--domain", "KVSTORE_DOMAIN", "domain"),
    "etag": ("--etag", "KVSTORE_ETAG", "etag"),
    "previous_owner_read": ("--previous-owner-read", "KVSTORE_PREVIOUS_OWNER_READ", "bool"),
    "resp_port": ("--resp-port", "KVSTORE_RESP_PORT", "port"),
    "resp_namespace": ("--resp-namespace", "KVSTORE_RESP_NAMESPACE", "str"),
    "resp_idle_timeout_seconds": ("--resp-idle-timeout", "KVSTORE_RESP_IDLE_TIMEOUT", "timeout"),
    "kv_events": ("--kv-events", "KVSTORE_KV_EVENTS", "str"),
    "g4_url": ("--g4", "KVSTORE_G4", "str"),
    "g4_endpoint": ("--g4-endpoint", "KVSTORE_G4_ENDPOINT", "str"),
    "g4_credentials": ("--g4-credentials", "KVSTORE_G4_CREDENTIALS", "path"),
    "g4_region": ("--g4-region", "KVSTORE_G4_REGION", "str"),
    "g4_spill_bytes_per_second": ("--g4-spill-rate", "KVSTORE_G4_SPILL_RATE", "size"),
    "master_key_file": ("--master-key-file", "KVSTORE_MASTER_KEY_FILE", "path"),
}
# Config-file spelling of each option (flag name without dashes, '_' or '-' accepted).
_FILE_KEYS = {flag[2:].replace("-", "_"): name for name, (flag, _, _) in _OPTIONS.items()}


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `kvstore serve`. Defaults are None so `resolve` can tell 'not given'."""
    d = ServeConfig()
    helps = {
        "host": f"address to listen on (default {d.host}; non-loopback needs --credentials)",
        "port": f"HTTP port: S3 API and /v1 control plane (default {d.port})",
        "bulk_port": f"bulk binary protocol port (default {d.bulk_port})",
        "data_dir": f"directory for segment files, created if missing (default {d.data_dir})",
        "capacity_bytes": f"flash budget, e.g. 10GiB (default {format_size(d.capacity_bytes)})",
        "dram_bytes": f"DRAM tier budget, e.g. 512MiB (default {format_size(d.dram_bytes)})",
        "segment_bytes": f"segment file size (default {format_size(d.segment_bytes)})",
        "lease_budget_bytes": "flash bytes lookup leases may pin at once, e.g. 2GiB (default "
                              f"{limits.leased_fraction_of_capacity_default:.0%} of --capacity, "
                              f"at most {limits.leased_fraction_of_capacity_max:.0%}; 0: no leases)",
        "device": f"I/O device: {'|'.join(DEVICES)} (default {d.device})",
        "credentials": "tenants JSON file; without it: loopback-only development mode",
        "tls_cert": "PEM certificate (chain): serve HTTPS and TLS on the bulk port",
        "tls_key": "PEM private key of --tls-cert",
        "tls_client_ca": "PEM CA bundle: mutual TLS, clients must present a certificate it "
                         "signed",
        "metrics_namespaces": "per-namespace series (names, blocks, bytes) on the unsigned "
                              "/metrics; they show every tenant's namespaces, so the default "
                              "is off with --credentials, on without",
        "log_level": f"{'|'.join(LOG_LEVELS)} (default {d.log_level})",
        "shutdown_seconds": f"graceful stop bound, at most {limits.shutdown_seconds_max:g}",
        "access_log": "log one line per HTTP request (method, path, status, bytes, duration) "
                      "on the kvstore.access logger (default off)",
        "connections_max": f"open connections per listener (default {d.connections_max})",
        "tenant_connections_max": "authenticated connections one tenant may hold per "
                                  "listener (HTTP: from its first signed request; bulk, "
                                  "Redis: from AUTH); past it 503 SlowDown, LimitExceeded, "
                                  "'max number of clients reached' (default: "
                                  "--max-connections)",
        "probe_connections": "HTTP connection slots, of --max-connections, kept for "
                             f"/healthz and /readyz (default {d.probe_connections})",
        "http_header_timeout_seconds": "seconds for an HTTP request line and headers, from "
                                       "accept or the previous response "
                                       f"(default {d.http_header_timeout_seconds:g})",
        "http_keepalive_timeout_seconds": "seconds an idle keep-alive HTTP connection stays "
                                          "open, at most the header timeout "
                                          f"(default {d.http_keepalive_timeout_seconds:g})",
        "body_idle_timeout_seconds": "seconds without a byte of an HTTP body or bulk PUT "
                                     f"payload (default {d.body_idle_timeout_seconds:g})",
        "body_min_rate_bytes_per_second": "slowest body or payload rate per second, e.g. "
                                          "64KiB; 0 turns the floor off (default "
                                          f"{format_size(d.body_min_rate_bytes_per_second)})",
        "body_rate_window_seconds": "seconds the body rate is averaged over "
                                    f"(default {d.body_rate_window_seconds:g})",
        "body_rate_grace_seconds": "seconds of a body before the rate floor applies "
                                   f"(default {d.body_rate_grace_seconds:g})",
        "bulk_handshake_timeout_seconds": "seconds for a bulk connection's HELLO and AUTH "
                                          f"(default {d.bulk_handshake_timeout_seconds:g})",
        "bulk_idle_timeout_seconds": "seconds an authenticated bulk connection may sit idle "
                                     f"(default {d.bulk_idle_timeout_seconds:g})",
        "pod": "pod name: with --etcd, register under /kvstore/POD/nodes/NODE_ID and share "
               "namespaces pod-wide",
        "etcd": "etcd client URLs, comma-separated, e.g. http://127.0.0.1:2379",
        "node_id": "this node's id in the pod (default ADVERTISE:PORT)",
        "advertise": "host other nodes and clients reach this node at (default --host)",
        "peers": "static pod membership: JSON list of nodes (node_id, http, bulk, "
                 "capacity_bytes), instead of --etcd",
        "etcd_lease_ttl_seconds": "seconds a dead node stays in the pod's view (its etcd lease; "
                                  f"default {d.etcd_lease_ttl_seconds:g})",
        "etcd_timeout_seconds": "seconds for one etcd call before etcd counts as down "
                                f"(default {d.etcd_timeout_seconds:g})",
        "forward_timeout_seconds": "seconds for a request forwarded to the block's owner before "
                                   "that node counts as a miss (default "
                                   f"{d.forward_timeout_seconds:g})",
        "engine_timeout_seconds": "seconds an engine call (flash I/O) may take before its "
                                  "request answers 503 SlowDown: a stalled disk gives bounded "
                                  f"errors, not hung clients (default {d.engine_timeout_seconds:g})",
        "domain": "S3 virtual-host-style addressing: a request whose Host is BUCKET.DOMAIN "
                  "(any port) names the bucket, its path the key; path-style keeps working "
                  "(default: path-style only)",
        "etag": f"S3 ETags: {'|'.join(ETAGS)} (default {d.etag}); xxh3 skips the MD5 pass but "
                "breaks sync tools (aws s3 sync, rclone, s3cmd) that compare ETags with MD5s",
        "previous_owner_read": "in a pod, a read that misses at a block's replicas also asks "
                               "the node that owned it before the last join, and copies a hit "
                               "forward (default on; --no-previous-owner-read turns it off)",
        "resp_port": "serve the Redis protocol (RESP2/3: GET, SET, MGET, ...) on this port "
                     "(default: off; 0 picks a free port)",
        "resp_namespace": "namespace of Redis keys without a 'namespace/' prefix "
                          f"(default {d.resp_namespace})",
        "resp_idle_timeout_seconds": "seconds an authenticated Redis connection may sit idle "
                                     f"(default {d.resp_idle_timeout_seconds:g})",
        "kv_events": "publish vLLM-format KV events (ZMQ PUB, bound here), e.g. "
                     "tcp://127.0.0.1:5557 (default: off)",
        "g4_url": "G4 tier: spill cold blocks to this object store location, s3://BUCKET/PREFIX",
        "g4_endpoint": "G4 object store endpoint URL, e.g. http://127.0.0.1:8333 (required "
                       "with --g4)",
        "g4_credentials": "G4 credentials file (JSON: access_key_id, secret_access_key); "
                          "default AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        "g4_region": "G4 region (default AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)",
        "g4_spill_bytes_per_second": "G4 upload bandwidth per second, e.g. 256MiB (default "
                                     f"{format_size(d.g4_spill_bytes_per_second)})",
        "master_key_file": "encrypt every block written from now on (AES-256-GCM, a data key "
                           "per namespace wrapped by this 32-byte key; `kvstore keygen FILE` "
                           "writes one). A store that holds encrypted blocks needs it to open",
    }
    for name, (flag, env, kind) in _OPTIONS.items():
        text = helps[name].replace("%", "%%")  # argparse %-formats help strings ("20% of")
        if kind == "bool":
            p.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{text} [env {env}=1|0]")
            continue
        p.add_argument(flag, dest=name, default=None, metavar=flag[2:].upper().replace("-", "_"),
                       help=f"{text} [env {env}]")
    p.add_argument("--config", dest="config", default=None, metavar="FILE",
                   help="TOML config file with the same option names [env KVSTORE_CONFIG]")


def _convert(kind: str, raw: Any, source: str) -> Any:
    what = source
    if kind == "size":
        return parse_size(raw, what=what)
    if kind == "port":
        try:
            port = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: port must be an integer, got {raw!r}") from None
        if isinstance(raw, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"{what}: port must be in 0..65535, got {raw!r}")
        return port
    if kind == "etag":
        v = str(raw).lower()
        if v not in ETAGS:
            raise ConfigError(f"{what}: etag must be one of {', '.join(ETAGS)}, got {raw!r}")
        return v
    if kind == "device":
        v = str(raw).lower()
        if v not in DEVICES:
            raise ConfigError(f"{what}: device must be one of {', '.join(DEVICES)}, got {raw!r}")
        return v
    if kind == "level":
        v = str(raw).lower()
        if v not in LOG_LEVELS:
            raise ConfigError(f"{what}: log level must be one of {', '.join(LOG_LEVELS)}")
        return v
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        v = str(raw).strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ConfigError(f"{what}: expected true or false (1/0, yes/no, on/off), got {raw!r}")
    if kind == "seconds":
        try:
            secs = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected seconds, got {raw!r}") from None
        if not 0 < secs <= limits.shutdown_seconds_max:
            raise ConfigError(
                f"{what}: must be in (0, {limits.shutdown_seconds_max:g}] seconds, got {raw!r}")
        return secs
    if kind == "timeout":
        lo, hi = limits.connection_timeout_seconds_min, limits.connection_timeout_seconds_max
        try:
            secs = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected seconds, got {raw!r}") from None
        if isinstance(raw, bool) or not lo <= secs <= hi:
            raise ConfigError(f"{what}: must be in [{lo:g}, {hi:g}] seconds, got {raw!r}")
        return secs
    if kind in ("lease_ttl", "etcd_timeout", "forward_timeout"):
        lo, hi = {"lease_ttl": (limits.etcd_lease_ttl_seconds_min,
                                limits.etcd_lease_ttl_seconds_max),
                  "etcd_timeout": (limits.etcd_call_timeout_seconds_min,
                                   limits.etcd_call_timeout_seconds_max),
                  "forward_timeout": (limits.forward_timeout_seconds_min,
                                      limits.forward_timeout_seconds_max)}[kind]
        try:
            bounded = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected seconds, got {raw!r}") from None
        if isinstance(raw, bool) or not lo <= bounded <= hi:
            raise ConfigError(f"{what}: must be in [{lo:g}, {hi:g}] seconds, got {raw!r}")
        return bounded
    if kind == "name":
        name = str(raw)
        if not _NAME_RE.match(name):
            raise ConfigError(f"{what}: use 1-64 letters, digits, '.', '_', '-' or ':', "
                              f"got {raw!r}")
        return name
    if kind == "domain":
        dom = str(raw).strip().lower().rstrip(".")
        if len(dom) > limits.s3_domain_bytes_max or not all(
                _DOMAIN_LABEL_RE.fullmatch(label) for label in dom.split(".")):
            raise ConfigError(f"{what}: expected a DNS name such as s3.example.com (labels of "
                              f"letters, digits and '-', at most {limits.s3_domain_bytes_max} "
                              f"characters, no port), got {raw!r}")
        return dom
    if kind == "count":
        try:
            n = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected a whole number, got {raw!r}") from None
        if isinstance(raw, bool) or not 0 <= n <= limits.connections_max_allowed:
            raise ConfigError(
                f"{what}: must be in 0..{limits.connections_max_allowed}, got {raw!r}")
        return n
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{what}: expected a non-empty string, got {raw!r}")
    return raw


def load_config_file(path: str) -> dict[str, Any]:
    """Option values from a TOML file (top level or a ``[serve]`` table), by option name.

    Relative paths inside the file (data_dir, credentials) are relative to the file's directory.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path!r}: {exc}") from None
    table = doc["serve"] if isinstance(doc.get("serve"), dict) else doc
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = _FILE_KEYS.get(key.replace("-", "_"))
        if name is None:
            known = ", ".join(sorted(_FILE_KEYS))
            raise ConfigError(f"config file {path!r}: unknown option {key!r} (known: {known})")
        if _OPTIONS[name][2] == "path" and isinstance(value, str) and value:
            value = os.path.join(base, os.path.expanduser(value))
        out[name] = value
    return out


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """Apply precedence flag > env > config file > default, then validate."""
    config_path = getattr(args, "config", None) or env.get("KVSTORE_CONFIG") or None
    from_file = load_config_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    for name, (flag, env_name, kind) in _OPTIONS.items():
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = _convert(kind, flag_value, flag)
        elif env.get(env_name, "") != "":
            values[name] = _convert(kind, env[env_name], env_name)
        elif name in from_file:
            key = _OPTIONS[name][0][2:].replace("-", "_")
            values[name] = _convert(kind, from_file[name], f"{config_path}: {key}")
    key_file = values.get("master_key_file")
    master_key = None if key_file is None else read_master_key_file(key_file)
    cfg = ServeConfig(**values, master_key=master_key, config_file=config_path)
    validate(cfg)
    return replace(cfg, g4=resolve_g4(cfg, env))


def resolve_g4(cfg: ServeConfig, env: Mapping[str, str]) -> G4Config | None:
    """The G4 settings from the flags and, for credentials and region, a file or the AWS
    environment variables (read here, once). None without --g4."""
    if cfg.g4_url is None:
        if cfg.g4_endpoint or cfg.g4_credentials:
            raise ConfigError("--g4-endpoint and --g4-credentials need --g4 s3://BUCKET/PREFIX")
        return None
    m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", cfg.g4_url)
    if m is None:
        raise ConfigError(f"--g4 {cfg.g4_url!r}: expected s3://BUCKET/PREFIX")
    if not cfg.g4_endpoint or not re.match(r"^https?://[^/\s]+/?$", cfg.g4_endpoint):
        raise ConfigError("--g4 needs --g4-endpoint http(s)://HOST:PORT (the object store)")
    if cfg.g4_spill_bytes_per_second < limits.g4_spill_bytes_per_second_min:
        raise ConfigError(f"--g4-spill-rate must be at least "
                          f"{format_size(limits.g4_spill_bytes_per_second_min)}")
    if cfg.g4_credentials is not None:
        try:
            with open(cfg.g4_credentials) as f:
                creds = json.load(f)
            access, secret = str(creds["access_key_id"]), str(creds["secret_access_key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--g4-credentials {cfg.g4_credentials!r}: expected JSON with "
                              f"access_key_id and secret_access_key ({exc})") from None
    else:
        access, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
        if not access or not secret:
            raise ConfigError("--g4 needs credentials: --g4-credentials FILE or "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    region = (cfg.g4_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
              or "us-east-1")
    return G4Config(m.group(1), (m.group(2) or "").strip("/"), cfg.g4_endpoint.rstrip("/"),
                    region, access, secret, cfg.g4_spill_bytes_per_second)


def read_master_key_file(path: str) -> bytes:
    """The master key in ``path``: exactly ``limits.master_key_bytes``, readable by its owner
    only (as `kvstore keygen` writes it). Raises ConfigError."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(limits.master_key_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"--master-key-file: cannot read {path!r}: {exc}") from None
    if len(raw) != limits.master_key_bytes:
        raise ConfigError(f"--master-key-file: {path!r} holds {len(raw)} bytes, not a "
                          f"{limits.master_key_bytes}-byte key (write one with `kvstore keygen`)")
    if mode & 0o077:
        raise ConfigError(f"--master-key-file: {path!r} is readable by others (mode "
                          f"{mode & 0o777:o}); chmod 600 it")
    return raw


def physical_memory_bytes() -> int:
    """Total RAM, or 0 when the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def validate(cfg: ServeConfig) -> None:
    """Cross-field checks with messages a user can act on."""
    seg = cfg.segment_bytes
    if not limits.segment_bytes_min <= seg <= limits.segment_bytes_max:
        raise ConfigError(
            f"segment size {format_size(seg)} must be in {format_size(limits.segment_bytes_min)}"
            f"..{format_size(limits.segment_bytes_max)}")
    if seg % limits.io_alignment_bytes:
        raise ConfigError(f"segment size must be a multiple of {limits.io_alignment_bytes} bytes")
    need = limits.capacity_segments_min * seg
    if cfg.capacity_bytes < need:
        raise ConfigError(
            f"capacity {format_size(cfg.capacity_bytes)} must hold at least "
            f"{limits.capacity_segments_min} segments of {format_size(seg)} "
            f"({format_size(need)}); lower --segment-size or raise --capacity")
    lease_max = int(limits.leased_fraction_of_capacity_max * cfg.capacity_bytes)
    if cfg.lease_budget_bytes is not None and cfg.lease_budget_bytes > lease_max:
        raise ConfigError(
            f"--lease-budget {format_size(cfg.lease_budget_bytes)} is more than "
            f"{limits.leased_fraction_of_capacity_max:.0%} of --capacity "
            f"({format_size(lease_max)}): reclaim must be able to move every leased block")
    ram = physical_memory_bytes()
    if ram and cfg.dram_bytes > ram * limits.dram_fraction_of_memory_max:
        raise ConfigError(
            f"--dram {format_size(cfg.dram_bytes)} is more than "
            f"{int(limits.dram_fraction_of_memory_max * 100)}% of this machine's memory "
            f"({format_size(ram)}); the DRAM tier must fit beside the index and the buffers")
    validate_connections(cfg)
    if cfg.port and cfg.port == cfg.bulk_port:
        raise ConfigError(f"--port and --bulk-port must differ (both {cfg.port})")
    if cfg.resp_port and cfg.resp_port in (cfg.port, cfg.bulk_port):
        raise ConfigError(f"--resp-port {cfg.resp_port} must differ from --port and --bulk-port")
    if cfg.kv_events is not None:
        m = re.match(r"^(?:ipc://\S+|tcp://(\[[^\]]+\]|[^:/\s]+):\d+)$", cfg.kv_events)
        if not m:
            raise ConfigError(f"--kv-events: expected a ZMQ endpoint such as "
                              f"tcp://127.0.0.1:5557, got {cfg.kv_events!r}")
        if cfg.credentials is None and m.group(1) and not is_loopback(m.group(1)):
            raise ConfigError(f"refusing to publish KV events on {cfg.kv_events!r} without "
                              "--credentials: events name every tenant's blocks (and token "
                              "ids), so development mode publishes on loopback only")
    if cfg.credentials is None and not is_loopback(cfg.host):
        raise ConfigError(
            f"refusing to listen on {cfg.host!r} without --credentials: development mode "
            "accepts any signature, so it serves loopback only (127.0.0.1 or ::1). "
            "Pass --credentials FILE to serve other addresses.")
    if cfg.credentials is not None and not os.path.isfile(cfg.credentials):
        raise ConfigError(f"credentials file {cfg.credentials!r} does not exist")
    validate_tls(cfg)
    validate_pod(cfg)


def validate_tls(cfg: ServeConfig) -> None:
    """Certificate and key come together; a client CA needs them. The files' contents are
    checked when the server builds its context (``kvstore.transport.tls``), before the store."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both (or neither)")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key),
                       ("--tls-client-ca", cfg.tls_client_ca)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag} {path!r} does not exist or is not readable")


def validate_pod(cfg: ServeConfig) -> None:
    """The pod flags' relations: etcd needs a pod name; etcd and a static list exclude each
    other; a wildcard listen address needs --advertise."""
    if cfg.etcd is not None:
        if not any(u.strip() for u in cfg.etcd.split(",")):
            raise ConfigError("--etcd: give at least one URL, e.g. http://127.0.0.1:2379")
        if cfg.pod is None:
            raise ConfigError("--etcd needs --pod NAME (the pod's key prefix in etcd)")
        if cfg.peers is not None:
            raise ConfigError("--etcd and --peers exclude each other: membership comes from "
                              "one of them")
    elif cfg.pod is not None and cfg.peers is None:
        raise ConfigError("--pod needs --etcd URL (or --peers FILE for a static pod)")
    if cfg.peers is not None and not os.path.isfile(cfg.peers):
        raise ConfigError(f"peers file {cfg.peers!r} does not exist")
    in_pod = cfg.etcd is not None or cfg.peers is not None
    if in_pod and cfg.advertise is None and cfg.host in ("0.0.0.0", "::", ""):
        raise ConfigError(f"--host {cfg.host} is every address: pass --advertise HOST, the "
                          "address other nodes and clients reach this node at")
    if cfg.etcd_timeout_seconds >= cfg.etcd_lease_ttl_seconds / limits.etcd_keepalives_per_ttl:
        raise ConfigError(
            f"--etcd-timeout {cfg.etcd_timeout_seconds:g} must be less than a third of "
            f"--etcd-lease-ttl {cfg.etcd_lease_ttl_seconds:g}: a keep-alive must end before "
            "the next is due")


def validate_connections(cfg: ServeConfig) -> None:
    """The connection bounds' relations (kvstore.limits, "Connection timeouts")."""
    if cfg.connections_max < 1:
        raise ConfigError("--max-connections must be at least 1")
    if cfg.tenant_connections_max is not None and not (
            1 <= cfg.tenant_connections_max <= cfg.connections_max):
        raise ConfigError(f"--max-connections-per-tenant ({cfg.tenant_connections_max}) must "
                          f"be in 1..--max-connections ({cfg.connections_max})")
    if cfg.probe_connections >= cfg.connections_max:
        raise ConfigError(
            f"--probe-connections ({cfg.probe_connections}) must be less than "
            f"--max-connections ({cfg.connections_max}): the rest serve every request")


def from_argv(argv: Sequence[str], env: Mapping[str, str]) -> ServeConfig:
    """Parse `serve` flags only (tests and embedding)."""
    p = argparse.ArgumentParser(prog="kvstore serve")
    add_serve_arguments(p)
    return resolve(p.parse_args(list(argv)), env)


def describe(cfg: ServeConfig) -> dict[str, object]:
    """A printable view (sizes formatted)."""
    out: dict[str, object] = {}
    for f in fields(cfg):
        if not f.repr:  # secrets: the master key, the resolved G4 config (its credentials)
            continue
        v = getattr(cfg, f.name)
        out[f.name] = format_size(v) if f.name.endswith("_bytes") and v is not None else v
    return out
