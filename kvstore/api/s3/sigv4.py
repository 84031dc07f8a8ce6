"""AWS Signature Version 4 for S3: header and presigned-URL forms, and streaming chunk signatures.

Pure functions over strings and bytes; no I/O. ``authenticate`` checks one request against the
tenants and returns who sent it plus a ``SigningContext`` that the aws-chunked decoder uses to
verify per-chunk signatures (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``).
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from kvstore import limits
from kvstore.api.errors import RequestExpired, S3Error
from kvstore.api.s3.numbers import ascii_uint
from kvstore.auth import Tenant, Tenants, constant_time_equal
from kvstore.errors import AccessDenied, AuthenticationFailed

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AMZ_DATE_FMT = "%Y%m%dT%H%M%SZ"
# AWS's own answer to SigV2 where only SigV4 is served (400 InvalidRequest), plus how to ask
# each common client for SigV4. The same answer in development mode and with credentials.
SIGV2_REFUSED = (
    "The authorization mechanism you have provided (Signature Version 2) is not supported. "
    "Please use AWS4-HMAC-SHA256 (Signature Version 4): boto3/botocore "
    "Config(signature_version='s3v4'); aws-cli v1 "
    "'aws configure set default.s3.signature_version s3v4' (aws-cli v2 always signs SigV4); "
    "django-storages AWS_S3_SIGNATURE_VERSION = 's3v4'.")


@dataclass(frozen=True)
class AuthParams:
    """What a request claims: from the Authorization header or the presigned query."""

    access_key: str
    date: str  # yyyymmdd of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str  # the request time, yyyymmddThhmmssZ
    presigned: bool = False
    expires: int = 0

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class SigningContext:
    """Enough to verify chunk and trailer signatures of a streaming body."""

    key: bytes
    amz_date: str
    scope: str
    seed_signature: str


def uri_encode(s: str, safe: str = "-_.~") -> str:
    return quote(s, safe=safe)


def _iso(ts: float) -> str:
    """A time as AWS writes it in an error's ServerTime and Expires elements."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_amz_date(s: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(s, _AMZ_DATE_FMT)))
    except ValueError:
        raise AccessDenied("invalid X-Amz-Date") from None


def request_time(headers: Mapping[str, str]) -> str:
    """The request time of a header-signed request as SigV4's string to sign holds it
    (yyyymmddThhmmssZ): X-Amz-Date when sent, else the ``Date`` header, which SigV4 allows in
    its place (an HTTP-date, or the same basic ISO 8601 form); "" when neither is there."""
    amz = headers.get("x-amz-date")
    if amz is not None:
        return amz
    date = headers.get("date", "").strip()
    if not date:
        return ""
    if len(date) == 16 and date[8] == "T" and date.endswith("Z"):
        return date
    try:
        dt = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        raise AccessDenied("the Date header is not a valid HTTP date") from None
    if dt.tzinfo is None:  # RFC 9110: an HTTP-date is in GMT
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.astimezone(datetime.UTC).strftime(_AMZ_DATE_FMT)


def _parse_credential(cred: str, err: str) -> tuple[str, str, str, str]:
    parts = cred.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or parts[3] != "s3" or not parts[0]:
        raise S3Error(err, "the credential must be AK/yyyymmdd/region/s3/aws4_request")
    return parts[0], parts[1], parts[2], parts[3]


def parse_authorization(header: str, amz_date: str) -> AuthParams:
    """Parse ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``."""
    algo, _, rest = header.strip().partition(" ")
    if algo != ALGORITHM:
        raise S3Error("AuthorizationHeaderMalformed", f"unsupported algorithm {algo!r}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            fields[k] = v
    try:
        cred, signed, sig = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
    except KeyError as exc:
        raise S3Error("AuthorizationHeaderMalformed", f"missing {exc.args[0]}") from None
    ak, date, region, service = _parse_credential(cred, "AuthorizationHeaderMalformed")
    return AuthParams(ak, date, region, service, tuple(signed.split(";")), sig, amz_date)


def parse_presigned(query: Mapping[str, str]) -> AuthParams:
    err = "AuthorizationQueryParametersError"
    if query.get("X-Amz-Algorithm") != ALGORITHM:
        raise S3Error(err, "X-Amz-Algorithm must be AWS4-HMAC-SHA256")
    try:
        cred = query["X-Amz-Credential"]
        amz_date = query["X-Amz-Date"]
        expires_s = query["X-Amz-Expires"]
        signed = query["X-Amz-SignedHeaders"]
        sig = query["X-Amz-Signature"]
    except KeyError as exc:
        raise S3Error(err, f"missing {exc.args[0]}") from None
    parsed = ascii_uint(expires_s)
    if parsed is None:
        raise S3Error(err, "X-Amz-Expires must be a non-negative integer")
    expires = parsed
    if expires > limits.presign_seconds_max:
        raise S3Error(err, f"X-Amz-Expires must be at most {limits.presign_seconds_max}")
    ak, date, region, service = _parse_credential(cred, err)
    return AuthParams(ak, date, region, service, tuple(signed.split(";")), sig, amz_date,
                      presigned=True, expires=expires)


def canonical_query(pairs: Sequence[tuple[str, str]], *, drop_signature: bool = False) -> str:
    items = sorted(
        (uri_encode(k), uri_encode(v))
        for k, v in pairs
        if not (drop_signature and k == "X-Amz-Signature")
    )
    return "&".join(f"{k}={v}" for k, v in items)


def wire_text(value: str) -> str:
    """``value`` (bytes decoded as latin-1) read as UTF-8 instead, when its bytes are UTF-8:
    what a client that sent UTF-8 signed. Bytes that are not UTF-8 keep their latin-1 reading
    (a client that sent latin-1 text, e.g. Python's http.client with a str value, signed that
    text's UTF-8). ASCII, the common case, is returned as it is."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def canonical_request(
    method: str,
    raw_path: str,
    query_pairs: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload_hash: str,
    *,
    presigned: bool = False,
) -> str:
    """The canonical request. ``raw_path`` is the path exactly as sent (S3 does not normalize or
    re-encode it); ``headers`` are lowercase names, duplicates already joined with commas, and
    values as the server decodes them (latin-1: one char per byte). Clients sign the UTF-8 of
    their text and send its bytes, so values and path are read as UTF-8 where they are
    (``wire_text``) before the request is hashed as UTF-8: a header with non-ASCII UTF-8 (an
    x-amz-meta-* value with accents, as boto3 sends it) verifies."""
    lines = []
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            raise AuthenticationFailed(f"signed header {name!r} is missing")
        lines.append(f"{name}:{' '.join(wire_text(value).split())}\n")
    return "\n".join([
        method,
        wire_text(raw_path) or "/",
        canonical_query(query_pairs, drop_signature=presigned),
        "".join(lines),
        ";".join(signed_headers),
        payload_hash,
    ])


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    digest = hashlib.sha256(creq.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def sign(key: bytes, sts: str) -> str:
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def chunk_signature(ctx: SigningContext, prev: str, chunk_sha256_hex: str) -> str:
    sts = (f"{ALGORITHM}-PAYLOAD\n{ctx.amz_date}\n{ctx.scope}\n{prev}\n"
           f"{EMPTY_SHA256}\n{chunk_sha256_hex}")
    return sign(ctx.key, sts)


def trailer_signature(ctx: SigningContext, prev: str, trailer: bytes) -> str:
    digest = hashlib.sha256(trailer).hexdigest()
    return sign(ctx.key, f"{ALGORITHM}-TRAILER\n{ctx.amz_date}\n{ctx.scope}\n{prev}\n{digest}")


def authenticate(
    tenants: Tenants,
    method: str,
    raw_path: str,
    query_pairs: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    now: float,
) -> tuple[Tenant, SigningContext | None]:
    """Who sent this request, or AccessDenied / SignatureDoesNotMatch / RequestTimeTooSkewed.

    Development mode differs from production only in the signature itself: any access key and
    any signature are accepted (and so is a request with no signature at all), every caller is
    the development tenant, and the context is None (chunk signatures are not checked either).
    Everything else is checked the same way in both modes, so what a client gets wrong shows up
    in development, not first in production: SigV2 is refused, a malformed Authorization header
    or presigned query is refused, X-Amz-Date, the clock skew and presigned expiry are checked,
    x-amz-content-sha256 is required and the host header must be signed."""
    auth_header = headers.get("authorization")
    if auth_header is None and not query_pairs:  # unsigned, and no query to hold a signature
        if tenants.dev:
            return tenants.by_access_key(""), None
        raise AccessDenied("Anonymous access is not allowed")
    query = dict(query_pairs)
    if auth_header is not None:
        if auth_header.startswith("AWS "):
            raise S3Error("InvalidRequest", SIGV2_REFUSED)
        params = parse_authorization(auth_header, request_time(headers))
    elif "X-Amz-Signature" in query or "X-Amz-Credential" in query:
        params = parse_presigned(query)
    elif "AWSAccessKeyId" in query and "Signature" in query:
        raise S3Error("InvalidRequest", SIGV2_REFUSED)
    elif tenants.dev:  # development mode: a request with no signature is accepted
        return tenants.by_access_key(""), None
    else:
        raise AccessDenied("Anonymous access is not allowed")
    try:
        tenant = tenants.by_access_key(params.access_key)
    except AccessDenied:
        raise S3Error("InvalidAccessKeyId",
                      "The AWS Access Key Id you provided does not exist in our records.") from None
    if not params.amz_date:
        raise AccessDenied("X-Amz-Date or Date is required")
    t = parse_amz_date(params.amz_date)
    if params.amz_date[:8] != params.date:
        raise AuthenticationFailed("credential date does not match X-Amz-Date")
    if params.presigned:
        if now > t + params.expires:
            raise RequestExpired((("X-Amz-Expires", str(params.expires)),
                                  ("Expires", _iso(t + params.expires)),
                                  ("ServerTime", _iso(now))))
        if t - now > limits.clock_skew_seconds_max:
            raise AccessDenied("Request is not valid yet")
        payload_hash = query.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    else:
        if abs(now - t) > limits.clock_skew_seconds_max:
            raise S3Error("RequestTimeTooSkewed",
                          "The difference between the request time and the current time is "
                          "too large.", elements=(
                              ("RequestTime", params.amz_date), ("ServerTime", _iso(now)),
                              ("MaxAllowedSkewMilliseconds",
                               str(int(limits.clock_skew_seconds_max * 1000)))))
        payload_hash = headers.get("x-amz-content-sha256", "")
        if not payload_hash:
            raise S3Error("InvalidRequest", "x-amz-content-sha256 is required")
    if "host" not in params.signed_headers:
        raise AuthenticationFailed("the host header must be signed")
    if tenants.dev:  # development mode: the one check skipped is the signature itself
        return tenant, None
    creq = canonical_request(method, raw_path, query_pairs, headers, params.signed_headers,
                             payload_hash, presigned=params.presigned)
    key = signing_key(tenant.secret_key, params.date, params.region, params.service)
    expected = sign(key, string_to_sign(params.amz_date, params.scope, creq))
    if not constant_time_equal(expected, params.signature):
        raise AuthenticationFailed(
            "The request signature we calculated does not match the signature you provided.")
    return tenant, SigningContext(key, params.amz_date, params.scope, params.signature)
