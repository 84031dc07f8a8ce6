"""kvstore.config: sizes, precedence flag > env > file > default, validation messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kvstore import limits
from kvstore.config import (
    ConfigError,
    ServeConfig,
    describe,
    format_size,
    from_argv,
    is_loopback,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", 123),
        ("0", 0),
        ("4KiB", 4096),
        ("512MiB", 512 * limits.MiB),
        ("10GiB", 10 * limits.GiB),
        ("1G", limits.GiB),
        ("1g", limits.GiB),
        ("2 MB", 2 * limits.MiB),
        ("1.5GiB", 3 * limits.GiB // 2),
        ("7B", 7),
        (64, 64),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "10 GiBs", "-1", "1e9", "ten", "10XB", "2PiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="capacity"):
        parse_size(text, what="capacity")


def test_parse_size_rejects_huge() -> None:
    with pytest.raises(ConfigError, match="larger than 1 PiB"):
        parse_size("2048TiB")


def test_format_size_round_trips() -> None:
    for n in (123, 4096, 512 * limits.MiB, 10 * limits.GiB):
        assert parse_size(format_size(n)) == n


@pytest.mark.parametrize(
    ("host", "loop"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False), ("::", False),
     ("example.com", False)],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_defaults() -> None:
    cfg = from_argv([], {})
    assert cfg == ServeConfig()
    assert (cfg.host, cfg.port, cfg.bulk_port, cfg.data_dir) == ("127.0.0.1", 8700, 8701, "./data")
    assert cfg.device == "auto" and cfg.dev_mode
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    conf = tmp_path / "kv.toml"
    conf.write_text('port = 9100\nbulk_port = 9101\ncapacity = "4GiB"\ndram = "64MiB"\n'
                    'data_dir = "store"\nlog-level = "warning"\n')
    env = {"KVSTORE_CONFIG": str(conf), "KVSTORE_PORT": "9200", "KVSTORE_DRAM": "32MiB"}
    cfg = from_argv(["--port", "9300"], env)
    assert cfg.port == 9300  # flag beats env and file
    assert cfg.dram_bytes == 32 * limits.MiB  # env beats file
    assert cfg.bulk_port == 9101 and cfg.capacity_bytes == 4 * limits.GiB  # file beats default
    assert cfg.log_level == "warning"
    assert cfg.data_dir == str(tmp_path / "store")  # relative to the config file
    assert cfg.segment_bytes == limits.segment_bytes_default  # default
    # --config flag beats KVSTORE_CONFIG
    other = tmp_path / "other.toml"
    other.write_text("[serve]\nbulk_port = 9500\n")
    assert from_argv(["--config", str(other)], env).bulk_port == 9500


def test_access_log_is_off_by_default_and_a_switch_everywhere(tmp_path: Path) -> None:
    assert from_argv([], {}).access_log is False
    assert from_argv(["--access-log"], {}).access_log is True
    assert from_argv([], {"KVSTORE_ACCESS_LOG": "1"}).access_log is True
    assert from_argv(["--no-access-log"], {"KVSTORE_ACCESS_LOG": "yes"}).access_log is False
    conf = tmp_path / "kv.toml"
    conf.write_text("access_log = true\n")
    assert from_argv(["--config", str(conf)], {}).access_log is True
    assert from_argv(["--config", str(conf)], {"KVSTORE_ACCESS_LOG": "off"}).access_log is False
    with pytest.raises(ConfigError, match="KVSTORE_ACCESS_LOG: expected true or false"):
        from_argv([], {"KVSTORE_ACCESS_LOG": "loud"})
    conf.write_text('access-log = "maybe"\n')
    with pytest.raises(ConfigError, match="access_log: expected true or false"):
        from_argv(["--config", str(conf)], {})


def test_empty_env_value_is_unset() -> None:
    assert from_argv([], {"KVSTORE_PORT": ""}).port == 8700


@pytest.mark.parametrize(
    ("argv", "env", "match"),
    [
        (["--port", "http"], {}, "--port: port must be an integer"),
        ([], {"KVSTORE_PORT": "70000"}, "KVSTORE_PORT: port must be in 0..65535"),
        (["--device", "nvme"], {}, "device must be one of auto, uring, posix, memory"),
        (["--capacity", "lots"], {}, "--capacity: cannot parse size"),
        (["--capacity", "256MiB"], {}, "must hold at least 2 segments"),
        (["--segment-size", "1000000000"], {}, "multiple of 4096"),
        (["--segment-size", "8GiB", "--capacity", "64GiB"], {}, "segment size 8GiB must be"),
        (["--port", "9000", "--bulk-port", "9000"], {}, "must differ"),
        (["--dram", "1000TiB"], {}, "of this machine's memory"),
        (["--log-level", "loud"], {}, "log level must be one of"),
        (["--shutdown-seconds", "600"], {}, "--shutdown-seconds: must be in"),
        (["--host", "0.0.0.0"], {}, "refusing to listen on '0.0.0.0' without --credentials"),
        (["--credentials", "/nonexistent/creds.json"], {}, "does not exist"),
        (["--config", "/nonexistent/kv.toml"], {}, "config file .* does not exist"),
    ],
)
def test_invalid_values_have_clear_messages(argv: list[str], env: dict[str, str],
                                            match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_argv(argv, env)


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        from_argv(["--config", str(bad)], {})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown option 'prot'"):
        from_argv(["--config", str(unknown)], {})
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text("port = true\n")
    with pytest.raises(ConfigError, match="port must be"):
        from_argv(["--config", str(wrong_type)], {})


def test_non_loopback_allowed_with_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"tenants": [
        {"name": "a", "access_key": "AK", "secret_key": "SK", "namespaces": ["*"]}]}))
    cfg = from_argv(["--host", "0.0.0.0", "--credentials", str(creds)], {})
    assert cfg.host == "0.0.0.0" and not cfg.dev_mode


def test_lease_budget_flag_env_and_bound() -> None:
    assert from_argv([], {}).lease_budget_bytes is None  # the engine's default fraction
    cfg = from_argv(["--capacity", "10GiB", "--lease-budget", "2GiB"], {})
    assert cfg.lease_budget_bytes == 2 * limits.GiB
    assert from_argv([], {"KVSTORE_LEASE_BUDGET": "0"}).lease_budget_bytes == 0  # no leases
    with pytest.raises(ConfigError, match="--lease-budget 5GiB is more than 40% of --capacity"):
        from_argv(["--capacity", "10GiB", "--lease-budget", "5GiB"], {})


def test_connection_bounds_default_flag_env_and_file(tmp_path: Path) -> None:
    d = from_argv([], {})
    assert (d.connections_max, d.probe_connections) == (
        limits.connections_max, limits.probe_connections_reserved_default)
    assert d.http_header_timeout_seconds == limits.http_header_timeout_seconds_default
    assert d.bulk_idle_timeout_seconds == limits.bulk_idle_timeout_seconds_default
    conf = tmp_path / "kv.toml"
    conf.write_text('body_min_rate = "16KiB"\nbulk-handshake-timeout = 3\n')
    cfg = from_argv(["--http-header-timeout", "2.5", "--max-connections", "64",
                     "--config", str(conf)],
                    {"KVSTORE_BODY_TIMEOUT": "7", "KVSTORE_PROBE_CONNECTIONS": "4"})
    assert cfg.http_header_timeout_seconds == 2.5 and cfg.connections_max == 64
    assert cfg.body_idle_timeout_seconds == 7.0 and cfg.probe_connections == 4
    assert cfg.body_min_rate_bytes_per_second == 16 * limits.KiB
    assert cfg.bulk_handshake_timeout_seconds == 3.0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--http-header-timeout", "0"], "--http-header-timeout: must be in"),
        (["--bulk-idle-timeout", "99999"], "--bulk-idle-timeout: must be in"),
        (["--body-timeout", "soon"], "--body-timeout: expected seconds"),
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--max-connections", "many"], "--max-connections: expected a whole number"),
        (["--max-connections", "8", "--probe-connections", "8"], "must be less than"),
        (["--body-min-rate", "fast"], "--body-min-rate: cannot parse size"),
    ],
)
def test_invalid_connection_bounds_are_refused(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_argv(argv, {})


def test_engine_integration_flags() -> None:
    """--resp-port, --resp-namespace, --resp-idle-timeout and --kv-events (issue 11): off by
    default, from flags or env, and refused when they collide or are not an endpoint."""
    d = from_argv([], {})
    assert d.resp_port is None and d.resp_namespace == "default" and d.kv_events is None
    cfg = from_argv(["--resp-port", "6380", "--resp-namespace", "lmcache",
                     "--kv-events", "tcp://127.0.0.1:5557"], {"KVSTORE_RESP_IDLE_TIMEOUT": "30"})
    assert (cfg.resp_port, cfg.resp_namespace, cfg.resp_idle_timeout_seconds, cfg.kv_events) == (
        6380, "lmcache", 30.0, "tcp://127.0.0.1:5557")
    with pytest.raises(ConfigError, match="--resp-port 8700 must differ"):
        from_argv(["--resp-port", "8700"], {})
    with pytest.raises(ConfigError, match="--kv-events: expected a ZMQ endpoint"):
        from_argv(["--kv-events", "127.0.0.1:5557"], {})
    with pytest.raises(ConfigError, match="development mode publishes on loopback only"):
        from_argv(["--kv-events", "tcp://*:5557"], {})
    assert from_argv(["--kv-events", "tcp://[::1]:5557"], {}).kv_events == "tcp://[::1]:5557"


def test_serve_help_renders() -> None:
    """`kvstore serve --help` prints every flag (a '%' in a help text once broke argparse)."""
    import argparse
    import contextlib
    import io

    from kvstore.config import add_serve_arguments

    p = argparse.ArgumentParser(prog="kvstore serve")
    add_serve_arguments(p)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        p.parse_args(["--help"])
    assert exc.value.code == 0
    text = out.getvalue()
    share = f"{limits.leased_fraction_of_capacity_default:.0%} of --capacity"
    assert share in text and "--etag" in text
    assert "--resp-port" in text and "--kv-events" in text



def test_master_key_file_is_read_once_checked_and_never_printed(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"\x07" * limits.master_key_bytes)
    key.chmod(0o600)
    cfg = from_argv(["--master-key-file", str(key)], {})
    assert cfg.master_key == b"\x07" * limits.master_key_bytes
    assert "master_key" not in describe(cfg) and repr(b"\x07" * 32) not in repr(cfg)
    assert from_argv([], {"KVSTORE_MASTER_KEY_FILE": str(key)}).master_key == cfg.master_key
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        from_argv(["--master-key-file", str(key)], {})
    short = tmp_path / "short"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="not a 32-byte key"):
        from_argv(["--master-key-file", str(short)], {})
    with pytest.raises(ConfigError, match="cannot read"):
        from_argv(["--master-key-file", str(tmp_path / "missing")], {})
