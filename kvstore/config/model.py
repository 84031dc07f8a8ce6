"""The resolved, frozen configuration of `kvstore serve` (and of its G4 tier)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvstore import limits


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
