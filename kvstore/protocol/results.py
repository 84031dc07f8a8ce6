"""The bulk port's answers (BLOCK, END, ERROR, each RESULT): defined once, in the client
distribution (``kvstore_wire.results``)."""

from kvstore_wire.results import (
    ERROR_MESSAGE_CHARS_MAX,
    RESULTS,
    BlockHeader,
    DeleteResult,
    End,
    ErrorInfo,
    ExistsResult,
    LookupResult,
    NixlRegistered,
    PingResult,
    PrefetchResult,
    PutResult,
    Result,
    ShmRegistered,
    StatsResult,
    parse_result,
)

__all__ = [
    "ERROR_MESSAGE_CHARS_MAX", "RESULTS", "BlockHeader", "DeleteResult", "End", "ErrorInfo",
    "ExistsResult", "LookupResult", "NixlRegistered", "PingResult", "PrefetchResult",
    "PutResult", "Result", "ShmRegistered", "StatsResult", "parse_result",
]
