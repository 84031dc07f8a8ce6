"""Option values: the error type, the accepted spellings, and the parsing of one raw value (a
flag, an environment variable or a config-file entry) into its typed form (``_convert``).

Sizes accept plain byte counts and binary or decimal-looking units, all binary: ``123``,
``512KiB``, ``512MiB``, ``10GiB``, ``1G``, ``1.5TiB`` (``K``/``KB``/``KiB`` all mean 1024).
"""

from __future__ import annotations

import ipaddress
import re
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
