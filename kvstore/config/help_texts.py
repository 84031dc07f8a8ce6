"""The --help text of each `kvstore serve` option, by option name (``options._OPTIONS``)."""

from __future__ import annotations

from kvstore import limits
from kvstore.config.model import ServeConfig
from kvstore.config.values import DEVICES, ETAGS, LOG_LEVELS, format_size


def serve_helps(d: ServeConfig) -> dict[str, str]:
    """Help texts, with the defaults of ``d`` (a default ``ServeConfig``) filled in."""
    return {
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
