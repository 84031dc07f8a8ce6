"""Encryption at rest: the one seam between records and the device that sees keys.

With a master key (``EngineConfig.master_key``, from ``kvstore serve --master-key-file``) every
record written from then on has an AES-256-GCM payload (``format.FLAG_ENCRYPTED``):

- **Keys.** Each namespace has its own random 256-bit data key, wrapped by the master key with
  AES key wrap (RFC 3394) and kept in the catalog (``catalog.py``, ``data_keys``), next to a
  check value (a GCM tag of a fixed text under the master key) that tells a wrong master key
  at open. Rotating the master key (``rewrap``, ``kvstore rotate-key``) re-wraps the data keys;
  no block is rewritten.
- **Nonces.** Random 96-bit per record (``os.urandom``), stored in the record's header: never
  derived from sequence numbers, which a crash can hand out again after a torn write. Bound:
  ``limits.gcm_records_per_data_key_max`` (2**32) records per namespace key keep the chance of
  a reuse under 2**-32 (NIST SP 800-38D 8.3).
- **Associated data.** The namespace and the key: a record copied under another key's (or
  namespace's) header fails its tag, a read of it is a corrupt miss.
- **Whole records.** One GCM invocation per record, no chunk table: a ranged read of an
  encrypted block reads and authenticates the whole record (a per-chunk xxh3 is no MAC, so
  chunk-verified ranges would give up authenticity). The header also keeps the xxh3-64 of the
  ciphertext, so recovery's scan and the checker verify stored bytes without keys.

``begin_seal`` runs in ``batch.prepare`` (a nonce, outside all locks), ``seal_into`` in
``batch._build``, which encrypts the payload straight into the chunk's aligned buffer instead of
copying it (the tag goes into the header at encode time); ``open_into`` decrypts in place in
``RecordIO.read_record(plain=True)``. Reclaim copies records as stored (ciphertext, same nonce
and tag: the same encryption, not a reuse). The DRAM tier holds plaintext.
"""

from __future__ import annotations

import os
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.errors import CorruptRecord, MasterKeyError, NamespaceNotFound

_CHECK_TEXT = b"kvstore master key check v1"
_CHECK_NONCE = bytes(limits.gcm_nonce_bytes)  # one fixed message per master key: no reuse
_AAD_PREFIX = b"kvstore.record.v1\x00"


def check_master_key(key: bytes) -> bytes:
    if len(key) != limits.master_key_bytes:
        raise MasterKeyError(f"a master key is {limits.master_key_bytes} bytes, not {len(key)}")
    return key


def key_check_value(master: bytes) -> bytes:
    """What the catalog keeps to recognise ``master`` (a GCM tag; reveals nothing of it)."""
    return AESGCM(master).encrypt(_CHECK_NONCE, b"", _CHECK_TEXT)


def aad_of(namespace: bytes, key: bytes) -> bytes:
    return _AAD_PREFIX + namespace + b"\x00" + key


class DataKeys:
    """The wrapped data keys of a catalog: ``{namespace id: wrapped key}`` and the master key's
    check value (``b""``: the store was never encrypted)."""

    def __init__(self, wrapped: dict[int, bytes] | None = None, check: bytes = b"") -> None:
        self.wrapped = dict(wrapped or {})
        self.check = check

    def unwrap_all(self, master: bytes) -> dict[int, bytes]:
        """Every data key in the clear. Raises MasterKeyError for a key that is not this
        store's."""
        check_master_key(master)
        if self.check and key_check_value(master) != self.check:
            raise MasterKeyError("the master key does not match the one this store's data keys "
                                 "are wrapped with")
        try:
            return {i: aes_key_unwrap(master, w) for i, w in self.wrapped.items()}
        except InvalidUnwrap:
            raise MasterKeyError("a data key does not unwrap with this master key") from None

    def rewrap(self, old: bytes, new: bytes) -> DataKeys:
        """The same data keys wrapped by ``new`` (key rotation: no block is rewritten)."""
        keys = self.unwrap_all(old)
        check_master_key(new)
        return DataKeys({i: aes_key_wrap(new, k) for i, k in keys.items()}, key_check_value(new))


class RecordCipher:
    """Seals and opens record payloads. ``enabled`` is False without a master key: then it
    only refuses to open a store that holds encrypted data."""

    def __init__(self, master: bytes | None) -> None:
        self.master = None if master is None else check_master_key(master)
        self._raw: dict[int, bytes] = {}  # namespace id -> data key

    @property
    def enabled(self) -> bool:
        return self.master is not None

    def load(self, keys: DataKeys, ns_ids: list[int]) -> bool:
        """Take the catalog's data keys, and make one for each namespace that has none. Returns
        True when ``keys`` changed (the catalog must be saved). Raises MasterKeyError."""
        if self.master is None:
            if keys.check or keys.wrapped:
                raise MasterKeyError("this store holds encrypted blocks: start it with "
                                     "--master-key-file")
            return False
        self._raw = keys.unwrap_all(self.master)
        changed = not keys.check
        keys.check = keys.check or key_check_value(self.master)
        for i in ns_ids:
            changed |= self.add(keys, i)
        return changed

    def add(self, keys: DataKeys, ns_id: int) -> bool:
        """A fresh data key for namespace ``ns_id`` (if it has none), wrapped into ``keys``."""
        if self.master is None or ns_id in self._raw:
            return False
        raw = os.urandom(limits.data_key_bytes)
        keys.wrapped[ns_id] = aes_key_wrap(self.master, raw)
        self._raw[ns_id] = raw
        return True

    def forget(self, keys: DataKeys, ns_id: int) -> None:
        """Drop a deleted namespace's data key: its records on flash become unreadable."""
        keys.wrapped.pop(ns_id, None)
        self._raw.pop(ns_id, None)

    def begin_seal(self, ns_id: int, hdr: fmt.RecordHeader) -> fmt.RecordHeader:
        """The encrypted header for plaintext record ``hdr``: a fresh nonce, no chunk table
        (``format.py``); its tag and ciphertext checksum come from ``seal_into``."""
        if ns_id not in self._raw:  # deleted meanwhile
            raise NamespaceNotFound(f"no namespace {hdr.namespace.decode(errors='replace')}")
        return replace(hdr, flags=hdr.flags | fmt.FLAG_ENCRYPTED, chunk_log2=0, chunks=(),
                       nonce=os.urandom(limits.gcm_nonce_bytes),
                       tag=bytes(limits.gcm_tag_bytes), sealed_checksum=0)

    def seal_into(self, ns_id: int, hdr: fmt.RecordHeader, data: memoryview,
                  out: memoryview) -> tuple[bytes, int]:
        """Encrypt ``data`` into ``out`` (as long) under ``hdr``'s nonce, names and namespace
        key: (GCM tag, xxh3-64 of the ciphertext), for the header."""
        raw = self._raw.get(ns_id)
        if raw is None:
            raise NamespaceNotFound(f"no namespace {hdr.namespace.decode(errors='replace')}")
        enc = Cipher(algorithms.AES(raw), modes.GCM(hdr.nonce)).encryptor()
        enc.authenticate_additional_data(aad_of(hdr.namespace, hdr.key))
        enc.update_into(data, out)
        enc.finalize()
        return enc.tag, fmt.checksum(out)

    def open_into(self, ns_id: int, hdr: fmt.RecordHeader, payload: memoryview) -> None:
        """Decrypt ``payload`` in place and authenticate it (tag, namespace, key). On failure
        the buffer holds garbage and CorruptRecord is raised: the caller must not use it."""
        raw = self._raw.get(ns_id)
        if raw is None:
            raise CorruptRecord("encrypted record of a namespace without a data key"
                                if self.enabled else "encrypted record and no master key")
        dec = Cipher(algorithms.AES(raw), modes.GCM(hdr.nonce, hdr.tag)).decryptor()
        dec.authenticate_additional_data(aad_of(hdr.namespace, hdr.key))
        try:
            dec.update_into(payload, payload)
            dec.finalize()
        except InvalidTag:
            raise CorruptRecord("encrypted payload fails its GCM tag") from None
