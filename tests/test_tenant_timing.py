"""Tenant isolation by latency: another tenant cannot tell "the namespace exists and is acme's"
from "does not exist" by timing its denials, on S3 GET, ``/v1`` lookup and the bulk port, on a
real ``kvstore serve`` with credentials on 127.0.0.1.

Method (one comparison per interface; ``_compare``):

- Three arms, interleaved: each round runs every arm once, in a shuffled order, on the same
  connection (HTTP) or the same kind of fresh connection (bulk), so load and drift on the
  machine hit all of them alike. One arm asks for acme's namespace (``exists``), one for an
  absent name of the same length (``absent``), one is ``absent`` with a known delay added.
- Each value is the minimum of ``BURST`` back-to-back exchanges of its arm: scheduler and load
  spikes only ever add time, so the minimum is what the server's own work costs. An attacker
  filters the same way; it is what makes a difference of a few microseconds visible.
- Mann-Whitney effect size: P(a > b) + P(a = b)/2, exact over all pairs (``_auc``; scipy is not
  a dependency). 0.5 when both come from one distribution.
- Positive control, in the same rounds: ``DELAY_S`` (10 us; 20 us on ``/v1``, whose FastAPI
  path is about three times an S3 GET's and as much noisier) added to one arm's measured time
  by a spin on the client's clock inside the timed window. It is a real delay on the clock
  the test measures, under the noise of this run, so it shows what the harness resolves right
  now: its effect must lie outside ``AUC_BAND``, and the real comparison inside it.

The band is strict enough to catch the leak fixed in 77c2fd7 (before it, a foreign name that
did not exist raised and validated on its own path, ~5 us more): on that tree this test
measures P(exists > absent) of about 0.38-0.45 and fails (docs/SECURITY.md, "Tenant
isolation"). A sampling whose control does not clear the band, or that got too few rounds (a
burst of load), gives no verdict and is drawn again, up to ``SAMPLINGS``; the test fails when a
sampling whose control cleared the band found a difference and none found none, and is skipped
(saying why) only when no sampling could resolve the control at all.

Bulk port: a connection is bound to its namespace by HELLO and refused at AUTH, and no
request (LOOKUP, GET_BATCH, anything) is legal before AUTH_OK (``test_bulk_requests_wait_
for_auth_ok``), so the AUTH answer is the only step of a lookup or a get that can depend on the
namespace; it is timed from the AUTH frame sent to the answer received, for the HELLO a
lookup or get client sends (``create`` false) and the one the engine connectors send (``create``
true). Self-contained (only ``tests.test_auth_matrix``) so it runs against older trees too.
"""

from __future__ import annotations

import json
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from tests.test_auth_matrix import ACME, GLOBEX, REGION, Serve, s3

THEIRS, ABSENT = "acme-ones", "acme-none"  # same length: the requests differ in the name only
KEY = "00" * 15 + "01"
TENANTS = {"tenants": [
    {"name": ACME[0], "access_key": ACME[1], "secret_key": ACME[2], "namespaces": ["acme-*"]},
    {"name": GLOBEX[0], "access_key": GLOBEX[1], "secret_key": GLOBEX[2],
     "namespaces": ["globex-*"]},
]}

ROUNDS = 600  # per sampling; every arm once a round
ROUNDS_MIN = 250  # a sampling cut shorter by SECONDS_MAX (a slow machine) gives no verdict
WARMUP_ROUNDS = 20
BURST = 4  # exchanges per value: the value is their minimum
SECONDS_MAX = 6.0  # per sampling
DELAY_S = 10e-6  # the positive control's known difference
# /v1 (FastAPI) costs ~3x an S3 GET and is as much noisier: what it resolves under load is ~20 us
DELAY_V1_S = 20e-6
AUC_BAND = 0.05  # |P(exists > absent) - 0.5| allowed: ~3 standard errors at 600 rounds
SAMPLINGS = 3

Exchange = Callable[[float], float]  # one timed exchange, with this much added: seconds


def _spin(until: float) -> None:
    while time.perf_counter() < until:
        pass


def _auc(a: list[float], b: list[float]) -> float:
    """P(a > b) + P(a = b)/2: the Mann-Whitney U statistic over n*m, exact (ties count half)."""
    import numpy as np

    xa, xb = np.asarray(a), np.sort(np.asarray(b))
    lo, hi = np.searchsorted(xb, xa, "left"), np.searchsorted(xb, xa, "right")
    return float((lo.sum() + (hi - lo).sum() / 2) / (len(xa) * len(xb)))


def _sample(exists: Exchange, absent: Exchange, delay_s: float) -> dict[str, list[float]]:
    arms: dict[str, tuple[Exchange, float]] = {
        "exists": (exists, 0.0), "absent": (absent, 0.0), "control": (absent, delay_s)}
    rng = random.Random()
    names = list(arms)
    out: dict[str, list[float]] = {n: [] for n in names}
    end = time.monotonic() + SECONDS_MAX
    for i in range(WARMUP_ROUNDS + ROUNDS):
        if time.monotonic() > end:
            break
        rng.shuffle(names)
        for n in names:
            fn, extra = arms[n]
            best = min(fn(extra) for _ in range(BURST))
            if i >= WARMUP_ROUNDS:  # the first rounds warm connections and caches
                out[n].append(best)
    return out


def _compare(what: str, exists: Exchange, absent: Exchange, delay_s: float = DELAY_S) -> None:
    """Pass at the first sampling whose control clears the band and whose real comparison lies
    inside it; fail when every sampling whose control cleared the band found a difference. A
    sampling that is too short or whose control stays inside the band (the machine too loaded
    to resolve ``delay_s`` just then) gives no verdict; when none gives one, the test is
    skipped, saying so, rather than pass or fail on noise."""
    tries = []
    ctl_name = f"P(absent+{delay_s * 1e6:.0f}us>absent)"
    for _ in range(SAMPLINGS):
        got = _sample(exists, absent, delay_s)
        n = len(got["exists"])
        if n < ROUNDS_MIN:
            tries.append({"rounds": n, "verdict": "too few rounds"})
            continue
        auc = _auc(got["exists"], got["absent"])
        ctl = _auc(got["control"], got["absent"])
        med = [round(statistics.median(got[k]) * 1e6, 1) for k in ("exists", "absent")]
        resolved = ctl - 0.5 > AUC_BAND
        same = abs(auc - 0.5) <= AUC_BAND
        tries.append({"rounds": n, "P(exists>absent)": round(auc, 3),
                      ctl_name: round(ctl, 3), "medians_us": med,
                      "verdict": "no verdict" if not resolved else "same" if same else "DIFFERS"})
        if resolved and same:
            print(f"{what}: {tries[-1]}")
            return
    if any(t["verdict"] == "DIFFERS" for t in tries):
        pytest.fail(f"{what}: the latency depends on whether the namespace exists: {tries}")
    pytest.skip(f"{what}: this machine resolved no {delay_s * 1e6:.0f} us difference in "
                f"{SAMPLINGS} samplings (too loaded to measure): {tries}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("timing")
    creds = tmp / "tenants.json"
    creds.write_text(json.dumps(TENANTS))
    srv = Serve.start(tmp, tmp / "data", "creds", creds)
    try:
        c = s3(srv, ACME)
        c.create_bucket(Bucket=THEIRS)
        c.put_object(Bucket=THEIRS, Key=KEY, Body=b"secret-kv" * 1000)
        yield srv
    finally:
        srv.kill()


# -- HTTP ------------------------------------------------------------------------------------

def _signed(srv: Serve, method: str, path: str, body: bytes,
            who: tuple[str, str, str] = GLOBEX) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=srv.url + path, data=body,
                     headers={"content-type": "application/json"} if body else {})
    S3SigV4Auth(Credentials(who[1], who[2]), "s3", REGION).add_auth(req)
    return dict(req.headers.items())


def _request_bytes(srv: Serve, method: str, path: str, body: bytes,
                   who: tuple[str, str, str]) -> bytes:
    """The whole signed request, encoded once: the timed part is a send and a receive only
    (http.client's per-request header building and parsing is tens of microseconds of jitter
    that hides what the server does)."""
    headers = {**_signed(srv, method, path, body, who), "Host": f"127.0.0.1:{srv.http}"}
    if body:
        headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


def _response(s: socket.socket) -> bytes:
    """One HTTP/1.1 response on a keep-alive connection: its status line (the body, of
    Content-Length bytes, is read and dropped)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    assert b"transfer-encoding" not in fields, "a chunked answer: read it with http.client"
    left = int(fields.get(b"content-length", b"0")) - len(rest)
    while left > 0:
        chunk = s.recv(min(left, 65536))
        if not chunk:
            raise EOFError("the server closed the connection")
        left -= len(chunk)
    return lines[0]


def _http_exchange(s: socket.socket, srv: Serve, method: str, path: str, body: bytes,
                   status: int = 403, who: tuple[str, str, str] = GLOBEX) -> Exchange:
    req = _request_bytes(srv, method, path, body, who)
    want = f"HTTP/1.1 {status} ".encode()

    def run(extra: float) -> float:
        t0 = time.perf_counter()
        s.sendall(req)
        line = _response(s)
        if extra:
            _spin(time.perf_counter() + extra)
        dt = time.perf_counter() - t0
        assert line.startswith(want), (path, line)
        return dt

    return run


def _http_socket(srv: Serve) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.http), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


@pytest.mark.parametrize("what", ["s3 get", "v1 lookup"])
def test_http_denial_timing(world: Serve, what: str) -> None:
    s = _http_socket(world)
    try:
        def make(ns: str) -> Exchange:
            if what == "s3 get":
                return _http_exchange(s, world, "GET", f"/{ns}/{KEY}", b"")
            body = json.dumps({"keys": [KEY]}).encode()
            return _http_exchange(s, world, "POST", f"/v1/{ns}/lookup", body)

        _compare(what, make(THEIRS), make(ABSENT), DELAY_S if what == "s3 get" else DELAY_V1_S)
    finally:
        s.close()


# -- bulk port -------------------------------------------------------------------------------

def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("the server closed the connection")
        buf += chunk
    return bytes(buf)


def _frame(s: socket.socket) -> tuple[object, dict[str, object]]:
    from kvstore_wire.frames import PREAMBLE_BYTES, decode_header, decode_preamble

    pre = decode_preamble(_recv_exact(s, PREAMBLE_BYTES))
    head = decode_header(_recv_exact(s, pre.header_length)) if pre.header_length else {}
    return pre.ftype, head


def _hello(srv: Serve, ns: str, create: bool) -> tuple[socket.socket, bytes]:
    """A connection that sent HELLO for ``ns`` as globex and holds the signed AUTH frame."""
    from kvstore_wire import messages as msg
    from kvstore_wire.frames import FrameType, encode_frame

    s = socket.create_connection(("127.0.0.1", srv.bulk), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(encode_frame(FrameType.HELLO, 0, msg.Hello(GLOBEX[1], ns, create).to_header()))
    _, head = _frame(s)
    nonce = msg.Challenge.from_header(head).nonce
    sig = msg.sign(GLOBEX[2], nonce, GLOBEX[1], ns)
    return s, encode_frame(FrameType.AUTH, 0, msg.Auth(sig).to_header())


def _bulk_exchange(srv: Serve, ns: str, create: bool) -> Exchange:
    from kvstore_wire.frames import FrameType

    def run(extra: float) -> float:
        s, auth = _hello(srv, ns, create)  # connecting and HELLO are not timed
        try:
            t0 = time.perf_counter()
            s.sendall(auth)
            ftype, head = _frame(s)
            if extra:
                _spin(time.perf_counter() + extra)
            dt = time.perf_counter() - t0
        finally:
            s.close()
        assert ftype is FrameType.ERROR and head.get("name") == "AccessDenied", (ns, head)
        return dt

    return run


@pytest.mark.parametrize("create", [False, True], ids=["lookup-get", "create"])
def test_bulk_denial_timing(world: Serve, create: bool) -> None:
    _compare(f"bulk auth (create={create})", _bulk_exchange(world, THEIRS, create),
             _bulk_exchange(world, ABSENT, create))


@pytest.mark.parametrize("op", ["LOOKUP", "GET_BATCH"])
def test_bulk_requests_wait_for_auth_ok(world: Serve, op: str) -> None:
    """A LOOKUP or GET sent right behind AUTH, before AUTH_OK, is a protocol error answered at
    once, for any namespace: nothing of a lookup or get reaches the namespace before the AUTH
    answer, which the timing test above times."""
    from kvstore_wire import messages as msg
    from kvstore_wire.frames import FrameType, encode_frame

    for ns in (THEIRS, ABSENT):
        s, auth = _hello(world, ns, False)
        try:
            req = encode_frame(FrameType[op], 1, msg.KeysRequest([KEY]).to_header())
            s.sendall(auth + req)
            ftype, head = _frame(s)
        finally:
            s.close()
        assert ftype is FrameType.ERROR and head.get("name") == "ProtocolError", (ns, head)
