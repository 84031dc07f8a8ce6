"""The pod flags of `kvstore serve` (kvstore.config): precedence and their relations."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore import limits
from kvstore.config import ConfigError, from_argv


def test_pod_flags_and_env() -> None:
    cfg = from_argv(["--pod", "p1", "--etcd", "http://127.0.0.1:2379,127.0.0.2:2379",
                     "--node-id", "n-1", "--advertise", "127.0.0.11",
                     "--etcd-lease-ttl", "3", "--etcd-timeout", "0.5"], {})
    assert (cfg.pod, cfg.node_id, cfg.advertise) == ("p1", "n-1", "127.0.0.11")
    assert cfg.etcd == "http://127.0.0.1:2379,127.0.0.2:2379"
    assert (cfg.etcd_lease_ttl_seconds, cfg.etcd_timeout_seconds) == (3.0, 0.5)
    env = from_argv([], {"KVSTORE_POD": "p2", "KVSTORE_ETCD": "127.0.0.1:2379",
                         "KVSTORE_NODE_ID": "x"})
    assert (env.pod, env.node_id) == ("p2", "x")
    d = from_argv([], {})
    assert d.pod is None and d.etcd_lease_ttl_seconds == limits.etcd_lease_ttl_seconds_default


@pytest.mark.parametrize("args, words", [
    (["--etcd", "http://127.0.0.1:2379"], "needs --pod"),
    (["--pod", "p"], "needs --etcd"),
    (["--pod", "p/x", "--etcd", "127.0.0.1:1"], "letters"),
    (["--pod", "p", "--etcd", ","], "at least one URL"),
    (["--pod", "p", "--etcd", "127.0.0.1:1", "--etcd-lease-ttl", "0.5"], "[1, 300]"),
    (["--pod", "p", "--etcd", "127.0.0.1:1", "--etcd-lease-ttl", "2", "--etcd-timeout", "1"],
     "a third"),
    (["--peers", "/nonexistent/peers.json"], "does not exist"),
])
def test_pod_flag_refusals(args: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_argv(args, {})
    assert words in str(info.value)


def test_etcd_and_peers_exclude_each_other(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text("[]")
    with pytest.raises(ConfigError, match="exclude"):
        from_argv(["--pod", "p", "--etcd", "127.0.0.1:1", "--peers", str(peers)], {})
    cfg = from_argv(["--peers", str(peers)], {})
    assert cfg.peers == str(peers)


def test_wildcard_host_needs_advertise(tmp_path: Path) -> None:
    cred = tmp_path / "c.json"
    cred.write_text('{"tenants": [{"name": "t", "access_key": "a", "secret_key": "s"}]}')
    base = ["--host", "0.0.0.0", "--credentials", str(cred), "--pod", "p", "--etcd", "e:1"]
    with pytest.raises(ConfigError, match="--advertise"):
        from_argv(base, {})
    assert from_argv([*base, "--advertise", "node1"], {}).advertise == "node1"
