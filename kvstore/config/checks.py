"""Cross-field validation of a resolved ``ServeConfig``, with messages a user can act on."""

from __future__ import annotations

import os
import re

from kvstore import limits
from kvstore.config.model import ServeConfig
from kvstore.config.values import ConfigError, format_size, is_loopback


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
