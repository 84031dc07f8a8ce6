"""Encryption at rest (``engine/crypto.py``) on real files: no plaintext on flash, byte-exact
reads after a restart, tampered or moved ciphertext is a corrupt miss, a wrong master key
refuses to open, old plaintext blocks stay readable, master-key rotation."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.crypto import DataKeys
from kvstore.engine.store import Engine
from kvstore.engine.types import ReadOutcome
from kvstore.errors import MasterKeyError
from kvstore.service.admin import rotate_master_key

from .conftest import NS, Engines

SEG = 4 * limits.MiB
MARK = b"TOP-SECRET-PROMPT:"
SIZES = (0, 40, 3000, 5000, 2 * limits.MiB + 123)  # empty, inline, one page, multi-chunk


def secret(i: int, n: int) -> bytes:
    unit = MARK + f"{i:06d}|".encode()
    return (unit * (n // len(unit) + 1))[:n]


def files_with(data_dir: str, needle: bytes) -> list[str]:
    """Every file of the data directory that holds ``needle`` (segments, summaries, catalog)."""
    return [n for n in sorted(os.listdir(data_dir))
            if needle in Path(data_dir, n).read_bytes()]


def open_keyed(engines: Engines, data_dir: str, key: bytes | None, **kw: object) -> Engine:
    return engines.open(engines.device("real"),
                        engines.config(data_dir, segment_bytes=SEG, master_key=key, **kw),
                        namespace=None)


def records(path: str) -> list[tuple[int, fmt.RecordHeader]]:
    """(offset, header) of every record of a segment file, in order."""
    raw = Path(path).read_bytes()
    out, off = [], fmt.PAGE
    while off + fmt.PAGE <= len(raw):
        try:
            hdr = fmt.RecordHeader.decode(raw[off : off + fmt.PAGE])
        except Exception:  # noqa: BLE001 - the end of the log
            break
        out.append((off, hdr))
        off += hdr.span
    return out


def test_segments_and_summaries_hold_no_plaintext(engines: Engines, tmp_path: Path) -> None:
    key = os.urandom(32)
    d = str(tmp_path / "enc")
    eng = open_keyed(engines, d, key)
    eng.create_namespace(NS)
    want = {}
    for i in range(12):  # 12 x ~2 MiB rolls 4 MiB segments: sealed ones get summaries
        for n in SIZES:
            want[f"k{i}-{n}"] = secret(i, n)
            eng.put(NS, f"k{i}-{n}", want[f"k{i}-{n}"], meta=b"content-type: text/plain")
    assert any(n.endswith(".sum") for n in os.listdir(d))
    eng = engines.reopen(eng)
    assert files_with(d, MARK) == []
    assert files_with(d, key) == []  # the master key is never stored
    assert [eng.get(NS, k) for k in want] == list(want.values())  # byte-exact after restart
    with eng.reader.acquire(NS, f"k3-{SIZES[-1]}", (limits.MiB + 7, 1000)) as v:
        assert v is not None and bytes(v.payload) == want[f"k3-{SIZES[-1]}"][
            limits.MiB + 7 : limits.MiB + 1007]
    assert eng.check(deep=True) == []
    # control: the same writes without a key leave the text on flash (the grep sees it)
    plain = open_keyed(engines, str(tmp_path / "plain"), None)
    plain.create_namespace(NS)
    plain.put(NS, "k", secret(0, 5000))
    engines.close(plain)
    assert files_with(str(tmp_path / "plain"), MARK)


def test_wrong_or_missing_master_key_refuses_to_open(engines: Engines, tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    key = os.urandom(32)
    eng = open_keyed(engines, d, key)
    eng.create_namespace(NS)
    eng.put(NS, "a", secret(1, 9000))
    engines.close(eng)
    for other in (os.urandom(32), None):
        with pytest.raises(MasterKeyError, match="master key|master-key-file"):
            open_keyed(engines, d, other)
    eng = open_keyed(engines, d, key)  # the refusals dropped nothing and released the lock
    assert eng.get(NS, "a") == secret(1, 9000)


def test_plaintext_blocks_stay_readable_after_turning_encryption_on(engines: Engines,
                                                                   tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    eng = open_keyed(engines, d, None)
    eng.create_namespace(NS)
    old = {f"old{n}": secret(7, n) for n in SIZES}
    for k, v in old.items():
        eng.put(NS, k, v)
    engines.close(eng)
    eng = open_keyed(engines, d, os.urandom(32))
    eng.put(NS, "new", b"NEW-" + secret(8, 9000))
    assert all(eng.get(NS, k) == v for k, v in old.items())
    with eng.reader.acquire(NS, f"old{SIZES[-1]}", (limits.MiB, 10)) as view:
        assert view is not None and bytes(view.payload) == old[f"old{SIZES[-1]}"][
            limits.MiB : limits.MiB + 10]
    key = eng.config.master_key
    eng = engines.reopen(eng)
    assert eng.get(NS, "new") == b"NEW-" + secret(8, 9000)
    assert all(eng.get(NS, k) == v for k, v in old.items())
    assert b"NEW-" + MARK not in b"".join(Path(d, n).read_bytes() for n in os.listdir(d))
    assert key is not None


def _rewrite(path: str, off: int, hdr: fmt.RecordHeader, payload: bytes | None = None) -> None:
    """Put ``hdr`` (its CRC recomputed, as an attacker with the disk would) and optionally a
    payload at record offset ``off``."""
    page = bytearray(fmt.PAGE)
    n = hdr.encode_into(memoryview(page))
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(page[:n]))
        if payload is not None:
            f.seek(off + hdr.payload_offset)
            f.write(payload)


def _segment(d: str) -> str:
    (seg,) = [os.path.join(d, n) for n in os.listdir(d) if n.endswith(".kvs")]
    return seg


def test_flipped_ciphertext_byte_is_a_corrupt_miss(engines: Engines, tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    eng = open_keyed(engines, d, os.urandom(32))
    eng.create_namespace(NS)
    for k in ("a", "b"):
        eng.put(NS, k, secret(2, 20000))
    engines.close(eng)
    seg = _segment(d)
    (off_a, ha), (off_b, hb) = records(seg)
    raw = bytearray(Path(seg).read_bytes())
    # a: one flipped byte, nothing else: the ciphertext checksum catches it at the scan
    raw[off_a + ha.payload_offset + 100] ^= 0x01
    Path(seg).write_bytes(raw)
    # b: a flipped byte with the ciphertext checksum and header CRC forged: only GCM catches it
    ct = bytearray(raw[off_b + hb.payload_offset : off_b + hb.payload_offset + hb.payload_len])
    ct[5000] ^= 0x80
    _rewrite(seg, off_b, replace(hb, sealed_checksum=fmt.checksum(bytes(ct))), bytes(ct))
    eng = open_keyed(engines, d, eng.config.master_key)
    before = eng.stats()["checksum_failures"]
    assert eng.get(NS, "a") is None  # dropped by the scan
    lease = eng.reader.acquire(NS, "b")
    assert lease.outcome is ReadOutcome.CORRUPT and lease.view is None  # a miss, never bytes
    assert eng.stats()["checksum_failures"] == before + 1
    assert eng.get(NS, "b") is None


def test_record_moved_under_another_key_fails_to_decrypt(engines: Engines,
                                                         tmp_path: Path) -> None:
    """The GCM tag authenticates namespace and key: ``a``'s record (ciphertext, nonce, tag,
    checksums) under ``b``'s name decrypts to nothing, though every checksum holds."""
    d = str(tmp_path / "s")
    eng = open_keyed(engines, d, os.urandom(32))
    eng.create_namespace(NS)
    eng.put(NS, "a", secret(3, 20000))
    eng.put(NS, "b", secret(4, 20000))
    engines.close(eng)
    seg = _segment(d)
    (off_a, ha), (off_b, hb) = records(seg)
    raw = Path(seg).read_bytes()
    ct_a = raw[off_a + ha.payload_offset : off_a + ha.payload_offset + ha.payload_len]
    _rewrite(seg, off_b, replace(ha, key=hb.key, seq=hb.seq), ct_a)
    eng = open_keyed(engines, d, eng.config.master_key)
    assert eng.head(NS, "b") is not None  # the scan took the forged header as b's
    before = eng.stats()["checksum_failures"]
    lease = eng.reader.acquire(NS, "b")
    assert lease.outcome is ReadOutcome.CORRUPT and lease.view is None
    assert eng.stats()["checksum_failures"] == before + 1
    assert eng.get(NS, "a") == secret(3, 20000)


def test_rotation_rewraps_without_rewriting_blocks(engines: Engines, tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    old, new = os.urandom(32), os.urandom(32)
    eng = open_keyed(engines, d, old)
    eng.create_namespace(NS)
    eng.create_namespace("ns2")
    eng.put(NS, "a", secret(5, 70000))
    eng.put("ns2", "b", secret(6, 300))
    engines.close(eng)
    seg_before = Path(_segment(d)).read_bytes()
    with pytest.raises(MasterKeyError):
        rotate_master_key(d, os.urandom(32), new)  # not this store's key: nothing changes
    rotate_master_key(d, old, new)
    assert Path(_segment(d)).read_bytes() == seg_before  # no block rewritten
    with pytest.raises(MasterKeyError):
        open_keyed(engines, d, old)
    eng = open_keyed(engines, d, new)
    assert eng.get(NS, "a") == secret(5, 70000) and eng.get("ns2", "b") == secret(6, 300)


def test_dram_tier_holds_plaintext(engines: Engines, tmp_path: Path) -> None:
    """Memory is not at rest: a DRAM-tier hit is the plaintext, as written and as promoted."""
    eng = open_keyed(engines, str(tmp_path / "s"), os.urandom(32), dram_bytes=8 * limits.MiB)
    eng.create_namespace(NS)
    eng.put(NS, "a", secret(9, 70000))
    v = eng.reader.read_dram(NS, "a")
    assert v is not None and bytes(v.payload) == secret(9, 70000)


def test_data_keys_unwrap_only_with_their_master_key() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    from kvstore.engine.crypto import RecordCipher

    keys = DataKeys()
    assert RecordCipher(k1).load(keys, [1, 2]) and set(keys.wrapped) == {1, 2}
    assert len(keys.unwrap_all(k1)) == 2
    with pytest.raises(MasterKeyError):
        keys.unwrap_all(k2)
    with pytest.raises(MasterKeyError, match="32 bytes"):
        RecordCipher(b"short")


def test_reclaim_reinserts_encrypted_blocks_as_they_are(engines: Engines, tmp_path: Path) -> None:
    """Reinsertion copies a hot block's record (ciphertext, nonce, tag): it still decrypts
    after its segment is reclaimed and after a crash, and flash never holds its plaintext."""
    seg = limits.segment_bytes_min
    eng = engines.open(engines.device("real"), engines.config(
        str(tmp_path / "s"), segment_bytes=seg, capacity_bytes=8 * seg,
        master_key=os.urandom(32)), namespace=NS)
    hot = secret(11, 64 * 1024)
    eng.put(NS, "hot", hot)
    for i in range(10 * 8 * seg // (64 * 1024)):
        eng.put(NS, f"b{i:05d}", secret(i, 64 * 1024))
        if i % 8 == 0:
            assert eng.get(NS, "hot") == hot
    st = eng.stats()
    assert st["evicted_segments"] > 0 and st["reinserted_blocks"] > 0
    assert st["checksum_failures"] == 0
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "hot") == hot
    assert files_with(eng.config.data_dir, MARK) == []
