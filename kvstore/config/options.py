"""The flags of `kvstore serve`: one table (flag, environment variable, kind) and the argparse
parser built from it. Their help texts are in ``help_texts``."""

from __future__ import annotations

import argparse

from kvstore.config.help_texts import serve_helps
from kvstore.config.model import ServeConfig

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
    helps = serve_helps(ServeConfig())
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

