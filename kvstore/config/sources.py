"""Reading the sources of `kvstore serve` configuration once: flags, environment, the TOML
file, the files it names (G4 credentials, the master key); precedence applied, then validated."""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from kvstore import limits
from kvstore.config.checks import validate
from kvstore.config.model import G4Config, ServeConfig
from kvstore.config.options import _FILE_KEYS, _OPTIONS, add_serve_arguments
from kvstore.config.values import ConfigError, _convert, format_size


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
