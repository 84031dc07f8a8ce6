"""Deterministic keys: namespace fingerprints and chained block keys (DESIGN section 3).

Pure functions over canonical bytes, the same in every process and language:

- ``Layout`` is everything that makes KV bytes incompatible (model, revision, dtype, the KV
  geometry, the tensor-parallel shard, an optional tenant salt). ``Layout.fingerprint()`` is
  blake2b-128 over a canonical msgpack encoding of a sorted map that includes the scheme version.
- Block keys chain: ``k[-1] = H(fingerprint)``, ``k[i] = H(k[i-1] || u32le(len) || tokens as u32le
  || u32le(len(extra)) || extra)``. H is blake2b with a 16-byte digest and a per-purpose
  personalization, so a root key can never equal a block key by construction.
- Keys travel as lowercase hex (32 characters).
- Tenant salts (``salted_tenant_salt``, ``Layout.salted``): with credentials the server names
  each tenant a salt token (``tenant:NAME``, or ``shared:KEY_SALT`` for tenants that opted into
  sharing) in AUTH_OK and puts it first in ``tenant_salt`` of every layout a namespace is
  created with; a client that computes its own fingerprint applies the same rule, so identical
  prefixes of two tenants never share keys unless both opted in.

Never use Python's ``hash()`` for keys: it is salted per process.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import msgpack

from kvstore_wire import limits
from kvstore_wire.errors import InvalidKey, InvalidNamespace, LimitExceeded

KEY_SCHEME_VERSION = 1
KEY_BYTES = 16

_PERSON_NS = b"kvstore.ns.v1"
_PERSON_ROOT = b"kvstore.root.v1"
_PERSON_BLOCK = b"kvstore.blk.v1"

DTYPE_BYTES = {
    "float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
    "float8_e4m3fn": 1, "fp8": 1, "float8_e5m2": 1, "int8": 1, "uint8": 1,
}


def _h(data: bytes, person: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_BYTES, person=person).digest()


@dataclass(frozen=True)
class Layout:
    """What makes KV bytes of one model incompatible with another's."""

    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    tokens_per_block: int
    revision: str = ""
    tp_rank: int = 0
    tp_size: int = 1
    tenant_salt: str = ""

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "tokens_per_block", "tp_size",
                     "tp_rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v > limits.layout_int_max:
                raise ValueError(f"{name} must be an integer of at most {limits.layout_int_max}")
        for name in ("num_layers", "num_kv_heads", "head_dim", "tokens_per_block", "tp_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("model", "dtype", "revision", "tenant_salt"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > limits.layout_str_chars_max:
                raise ValueError(f"{name} must be a string of at most "
                                 f"{limits.layout_str_chars_max} characters")
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError("tp_rank must be in [0, tp_size)")
        if not self.model:
            raise ValueError("model must not be empty")

    def canonical_bytes(self) -> bytes:
        fields = asdict(self)
        fields["scheme"] = KEY_SCHEME_VERSION
        raw: bytes = msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)
        return raw

    def fingerprint(self) -> bytes:
        return _h(self.canonical_bytes(), _PERSON_NS)

    def salted(self, token: str) -> Layout:
        """This layout under the tenant salt ``token`` (``salted_tenant_salt``): the layout the
        server records, and whose fingerprint it answers, when this tenant creates a namespace
        with this layout."""
        return replace(self, tenant_salt=salted_tenant_salt(self.tenant_salt, token))

    def fingerprint_hex(self) -> str:
        return self.fingerprint().hex()

    def block_bytes(self) -> int | None:
        """Bytes of one full block (K and V, all layers, this shard's heads), or None when the
        dtype is unknown. MLA or other layouts may override this with an explicit size."""
        width = DTYPE_BYTES.get(self.dtype.lower())
        if width is None:
            return None
        heads = max(1, self.num_kv_heads // self.tp_size)
        return 2 * self.num_layers * heads * self.head_dim * self.tokens_per_block * width


def salted_tenant_salt(own: str, token: str) -> str:
    """``tenant_salt`` of a layout under the tenant salt ``token`` (what AUTH_OK names, and
    ``kvstore.auth.Policy.salt_token``): the token, then ``/`` and the client's own salt when it
    gave one (a fleet salt). Idempotent: a salt that already starts with the token is kept; an
    empty token (development mode, or a server that names none) adds nothing."""
    if not token or own == token or own.startswith(token + "/"):
        return own
    return f"{token}/{own}" if own else token


def chain_root(fingerprint: bytes) -> bytes:
    """k[-1]: the parent of the first block key of every chain in a namespace."""
    if len(fingerprint) != KEY_BYTES:
        raise ValueError("fingerprint must be 16 bytes")
    return _h(fingerprint, _PERSON_ROOT)


def next_key(parent: bytes, tokens: Sequence[int], extra: bytes = b"") -> bytes:
    """One link of the chain: the key of a block given its parent key and its tokens."""
    n = len(tokens)
    try:
        body = struct.pack(f"<I{n}I", n, *tokens)
    except struct.error as exc:
        raise ValueError("token ids must be integers in [0, 2**32)") from exc
    return _h(parent + body + struct.pack("<I", len(extra)) + extra, _PERSON_BLOCK)


def block_keys(
    fingerprint: bytes,
    tokens: Sequence[int],
    tokens_per_block: int,
    extras: Iterable[bytes] | None = None,
) -> list[str]:
    """Hex keys of every *full* block of ``tokens`` (a trailing partial block has no key).

    ``extras`` optionally gives per-block extra key bytes (LoRA id, multimodal hashes), one per
    full block.
    """
    if tokens_per_block <= 0:
        raise ValueError("tokens_per_block must be positive")
    n_blocks = len(tokens) // tokens_per_block
    if n_blocks > limits.chain_keys_max:
        raise LimitExceeded(f"chain of {n_blocks} blocks exceeds {limits.chain_keys_max}")
    extra_list = list(extras) if extras is not None else [b""] * n_blocks
    if len(extra_list) < n_blocks:
        raise ValueError("extras must give one entry per full block")
    key = chain_root(fingerprint)
    out: list[str] = []
    for i in range(n_blocks):
        chunk = tokens[i * tokens_per_block : (i + 1) * tokens_per_block]
        key = next_key(key, chunk, extra_list[i])
        out.append(key.hex())
    return out


# --- Validation of names that arrive from the network --------------------------------------

_NS_RE = re.compile(r"[a-z0-9][a-z0-9.\-]*[a-z0-9]")
_IP_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
# Prefixes and suffixes AWS reserves (access points, Object Lambda, multi-region access points,
# directory and table buckets, punycode labels, documentation examples): refused here as S3 does,
# so a name that works on kvstore works on AWS and back.
NAMESPACE_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
NAMESPACE_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def namespace_pattern() -> str:
    """The same rules as ``namespace_problem``, as one ECMA-262 / Python regular expression
    (lookaheads for the "must not" rules), for OpenAPI documents and other languages. A test
    pins ``re.fullmatch(namespace_pattern(), n)`` to ``namespace_problem(n) is None``."""
    lo, hi = limits.namespace_bytes_min, limits.namespace_bytes_max
    def esc(text: str) -> str:  # only '.' is special in these; '\\-' is invalid ECMA-262 (u flag)
        assert re.fullmatch(r"[a-z0-9.-]+", text), text
        return text.replace(".", r"\.")

    prefixes = "|".join(esc(p) for p in NAMESPACE_RESERVED_PREFIXES)
    suffixes = "|".join(esc(x) for x in NAMESPACE_RESERVED_SUFFIXES)
    return (rf"^(?!(?:{prefixes}))(?!.*(?:{suffixes})$)(?![0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$)"
            rf"(?!.*(?:\.\.|\.-|-\.))[a-z0-9][a-z0-9.-]{{{lo - 2},{hi - 2}}}[a-z0-9]$")


def namespace_problem(name: str) -> str | None:
    """Why ``name`` breaks the S3 general-purpose bucket naming rules, or None when it keeps
    them: 3..63 characters of lowercase letters, digits, dots and hyphens; beginning and ending
    with a letter or digit; no two adjacent dots, no dot next to a hyphen; not an IPv4 address;
    none of AWS's reserved prefixes and suffixes. Every front end (S3, /v1, the bulk port) and the
    catalog ask this one function."""
    if not isinstance(name, str):
        return "a namespace name must be a string"
    if not limits.namespace_bytes_min <= len(name) <= limits.namespace_bytes_max:
        return (f"a namespace name must be {limits.namespace_bytes_min}.."
                f"{limits.namespace_bytes_max} characters long")
    if not _NS_RE.fullmatch(name):
        return ("a namespace name may hold only lowercase letters, digits, dots and hyphens, "
                "and must begin and end with a letter or digit")
    if ".." in name or ".-" in name or "-." in name:
        return "a namespace name must not hold two adjacent dots or a dot next to a hyphen"
    if _IP_RE.fullmatch(name):
        return "a namespace name must not be formatted as an IP address"
    for p in NAMESPACE_RESERVED_PREFIXES:
        if name.startswith(p):
            return f"a namespace name must not begin with {p!r} (reserved by S3)"
    for sfx in NAMESPACE_RESERVED_SUFFIXES:
        if name.endswith(sfx):
            return f"a namespace name must not end with {sfx!r} (reserved by S3)"
    return None


def validate_namespace(name: str) -> str:
    """``name`` when it keeps the S3 bucket naming rules (``namespace_problem``), else
    InvalidNamespace (S3 InvalidBucketName) saying which rule it breaks."""
    problem = namespace_problem(name)
    if problem is not None:
        raise InvalidNamespace(f"invalid namespace name {name!r}: {problem}")
    return name


def validate_key(key: str) -> bytes:
    """Return the UTF-8 bytes of an object key, or raise InvalidKey."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("key must be a non-empty string")
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > limits.key_bytes_max:
        raise InvalidKey(f"key longer than {limits.key_bytes_max} bytes")
    if "\x00" in key:
        raise InvalidKey("key must not contain NUL")
    return raw
