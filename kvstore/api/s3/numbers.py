"""Unsigned integers from untrusted text (headers, query parameters, XML), the one way.

``str.isdigit`` is true for '²' and '٣', which ``int`` then refuses or reads; ``int`` refuses
more than 4,300 digits. Either escaped as a ValueError would be a 500. ``ascii_uint`` takes
ASCII digits only, at most ``UINT_DIGITS_MAX`` of them, and answers None for anything else, so
each caller raises its own S3 error.
"""

from __future__ import annotations

UINT_DIGITS_MAX = 19  # 2**63 has 19 digits; no size, count or duration here needs more


def ascii_uint(text: str | None, digits_max: int = UINT_DIGITS_MAX) -> int | None:
    if text is None or not text or len(text) > digits_max:
        return None
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)
