"""`kvstore serve` configuration: resolved once, frozen, passed down.

Sources, highest precedence first: command-line flag, ``KVSTORE_*`` environment variable, TOML
config file (``--config`` / ``KVSTORE_CONFIG``), built-in default. ``resolve()`` reads all of them
exactly once and returns a ``ServeConfig``; nothing below the CLI reads flags, environment or
config files again.

The package, by responsibility (every name is importable from ``kvstore.config`` itself):

- ``values``: ``ConfigError``, the accepted spellings, parsing one raw value (sizes, ports, ...)
- ``model``: the frozen ``ServeConfig`` and ``G4Config``
- ``options``: the flag table (flag, environment variable, kind) and ``add_serve_arguments``
- ``help_texts``: each flag's --help text
- ``checks``: cross-field validation of a resolved config
- ``sources``: reading flags, environment and files once (``resolve``, ``from_argv``)

A new flag: a field in ``model.ServeConfig``, a row in ``options._OPTIONS``, its text in
``help_texts``, and its relations to other flags (if any) in ``checks``.
"""

from kvstore.config.checks import (
    physical_memory_bytes,
    validate,
    validate_connections,
    validate_pod,
    validate_tls,
)
from kvstore.config.model import G4Config, ServeConfig
from kvstore.config.options import add_serve_arguments
from kvstore.config.sources import (
    describe,
    from_argv,
    load_config_file,
    read_master_key_file,
    resolve,
    resolve_g4,
)
from kvstore.config.values import (
    DEVICES,
    ETAGS,
    LOG_LEVELS,
    ConfigError,
    format_size,
    is_loopback,
    parse_size,
)

__all__ = [
    "DEVICES", "ETAGS", "LOG_LEVELS", "ConfigError", "G4Config", "ServeConfig",
    "add_serve_arguments", "describe", "format_size", "from_argv", "is_loopback",
    "load_config_file", "parse_size", "physical_memory_bytes", "read_master_key_file",
    "resolve", "resolve_g4", "validate", "validate_connections", "validate_pod",
    "validate_tls",
]
