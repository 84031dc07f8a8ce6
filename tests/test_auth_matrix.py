"""One tenant x namespace x operation matrix, driven through every front end of a real
``kvstore serve`` process on 127.0.0.1 (S3 via boto3, /v1 via signed HTTP, bulk via the SDK, shm,
NIXL when importable): every front end must give the same allow/deny answers, because they all
ask the one policy (``kvstore.auth``).

The data directory is first served in development mode, where the namespace ``shared-orphan``
is created without an owner; the server is then restarted with credentials. An ownerless
namespace is refused to every tenant until an operator runs ``kvstore namespace set-owner``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kvstore_client.nixl import nixl_available

from tests.serve_proc import child_env, free_ports

REPO = Path(__file__).resolve().parent.parent
START_SECONDS_MAX = 30.0
STOP_SECONDS_MAX = 30.0
REGION = "us-east-1"
SMALL = ["--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB"]
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def _child_pythonpath() -> str:
    """This tree first, then whatever the parent had (an extra installed beside the venv)."""
    return os.pathsep.join(filter(None, [str(REPO), str(REPO / "clients"),
                                         os.environ.get("PYTHONPATH")]))

ACME = ("acme", "AKIDACME", "acme-secret-key")
GLOBEX = ("globex", "AKIDGLOBEX", "globex-secret-key")
TENANTS = {"tenants": [
    {"name": ACME[0], "access_key": ACME[1], "secret_key": ACME[2],
     "namespaces": ["acme-*", "shared-*"]},
    {"name": GLOBEX[0], "access_key": GLOBEX[1], "secret_key": GLOBEX[2],
     "namespaces": ["globex-*", "shared-*"]},
]}
ORPHAN = "shared-orphan"  # created in development mode: no owner
BLOCK = b"kv-block" * 512

# (tenant, namespace) -> may it use it? acme owns acme-one and shared-acme (created with its
# credentials); globex's patterns match shared-acme but acme owns it; nobody owns the orphan.
ALLOWED = {
    ("acme", "acme-one"): True, ("acme", "shared-acme"): True, ("acme", ORPHAN): False,
    ("globex", "acme-one"): False, ("globex", "shared-acme"): False, ("globex", ORPHAN): False,
}
# after `kvstore namespace set-owner ... shared-orphan globex`
ALLOWED_AFTER = {**ALLOWED, ("globex", ORPHAN): True}
TENANT = {"acme": ACME, "globex": GLOBEX}


@dataclass
class Serve:
    """One `kvstore serve` subprocess."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    http: int
    bulk: int

    @classmethod
    def start(cls, tmp: Path, data: Path, name: str, creds: Path | None) -> Serve:
        http_port, bulk_port = free_ports(2)
        out, err = tmp / f"{name}.out", tmp / f"{name}.err"
        args = ["--port", str(http_port), "--bulk-port", str(bulk_port), "--data-dir", str(data),
                *SMALL, *([] if creds is None else ["--credentials", str(creds)])]
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve", *args],
                                    stdout=o, stderr=e, env=child_env(), cwd=tmp)
        srv = cls(proc, out, err, http_port, bulk_port)
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in out.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                srv.kill()
                pytest.fail(f"server did not start: {err.read_text()[-2000:]}")
            time.sleep(0.05)
        return srv

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(STOP_SECONDS_MAX) == 0, self.err.read_text()[-2000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def set_owner(data: Path, ns: str, tenant: str, creds: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": _child_pythonpath()}
    return subprocess.run([sys.executable, "-m", "kvstore", "namespace", "set-owner",
                           "--data-dir", str(data), "--credentials", str(creds), ns, tenant],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


# --- front ends -----------------------------------------------------------------------------

def s3(srv: Serve, who: tuple[str, str, str]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=srv.url, aws_access_key_id=who[1],
                        aws_secret_access_key=who[2], region_name=REGION,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def v1(srv: Serve, who: tuple[str, str, str], method: str, path: str,
       obj: Any = None) -> tuple[int, Any]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = b"" if obj is None else json.dumps(obj).encode()
    req = AWSRequest(method=method, url=srv.url + path, data=body,
                     headers={"content-type": "application/json"})
    S3SigV4Auth(Credentials(who[1], who[2]), "s3", REGION).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", srv.http, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(req.headers.items()))
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def _v1_ok(resp: tuple[int, Any]) -> bool:
    status, body = resp
    if status < 300:
        return True
    assert status == 403 and body["error"]["name"] == "AccessDenied", resp
    return False


def _s3_outcome(call: Callable[[], Any]) -> bool:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("AccessDenied", "403"), exc.response
        return False
    return True


def _sdk_outcome(call: Callable[[], Any]) -> bool:
    from kvstore_client import AccessDenied

    try:
        call()
    except AccessDenied:
        return False
    return True


def via_s3(srv: Serve, who: tuple[str, str, str], ns: str, op: str) -> bool:
    c = s3(srv, who)
    if op == "read":
        return _s3_outcome(lambda: c.get_object(Bucket=ns, Key="k0")["Body"].read())
    if op == "write":
        return _s3_outcome(lambda: c.put_object(Bucket=ns, Key="kw-s3", Body=BLOCK))
    if op == "list":
        listed = [b["Name"] for b in c.list_buckets()["Buckets"]]
        return ns in listed and _s3_outcome(lambda: c.list_objects_v2(Bucket=ns))
    assert op == "delete"
    return _s3_outcome(lambda: c.delete_object(Bucket=ns, Key="kw-s3"))


def via_v1(srv: Serve, who: tuple[str, str, str], ns: str, op: str) -> bool:
    if op == "read":
        return (_v1_ok(v1(srv, who, "POST", f"/v1/{ns}/exists", {"keys": ["k0"]}))
                & _v1_ok(v1(srv, who, "GET", f"/v1/namespaces/{ns}")))
    if op == "write":  # /v1 has no block writes: prefetch stages blocks (it changes the tier)
        return _v1_ok(v1(srv, who, "POST", f"/v1/{ns}/prefetch", {"keys": ["k0"]}))
    if op == "list":
        status, body = v1(srv, who, "GET", "/v1/namespaces")
        assert status == 200, body
        return ns in [n["name"] for n in body["namespaces"]]
    assert op == "delete"
    return _v1_ok(v1(srv, who, "POST", f"/v1/{ns}/delete", {"keys": ["kw-v1"]}))


def via_bulk(srv: Serve, who: tuple[str, str, str], ns: str, op: str) -> bool | None:
    from kvstore_client import Client

    def run() -> None:
        with Client(port=srv.bulk, namespace=ns, access_key=who[1], secret_key=who[2],
                    retries=0, timeout=10) as c:
            if op == "read":
                assert c.get("k0") == BLOCK
            elif op == "write":
                c.put("kw-bulk", BLOCK)
            else:
                c.delete_many(["kw-bulk"])

    return None if op == "list" else _sdk_outcome(run)


def via_shm(srv: Serve, who: tuple[str, str, str], ns: str, op: str) -> bool | None:
    from kvstore_client.shm import ShmClient

    def run() -> None:
        with ShmClient(port=srv.bulk, namespace=ns, size=1 << 20, access_key=who[1],
                       secret_key=who[2], timeout=10) as c:
            if op == "read":
                assert c.get_many(["k0"], [0], [len(BLOCK)]) == [len(BLOCK)]
                assert bytes(c.region.view[:len(BLOCK)]) == BLOCK
            else:
                c.region.view[:len(BLOCK)] = BLOCK
                c.put_many(["kw-shm"], [0], [len(BLOCK)])

    return None if op in ("list", "delete") else _sdk_outcome(run)


def via_nixl(srv: Serve, who: tuple[str, str, str], ns: str, op: str) -> bool | None:
    from kvstore_client.nixl import NixlClient

    def run() -> None:
        region = bytearray(1 << 20)
        with NixlClient(port=srv.bulk, namespace=ns, access_key=who[1], secret_key=who[2],
                        timeout=10) as c:
            c.register(region)
            if op == "read":
                assert c.get_into_region(["k0"], [0], [len(BLOCK)]) == [len(BLOCK)]
                assert bytes(region[:len(BLOCK)]) == BLOCK
            else:
                c.region.view[:len(BLOCK)] = BLOCK  # type: ignore[union-attr]
                c.put_from_region(["kw-nixl"], [0], [len(BLOCK)])

    return None if op in ("list", "delete") else _sdk_outcome(run)


FRONT_ENDS: dict[str, Callable[[Serve, tuple[str, str, str], str, str], bool | None]] = {
    "s3": via_s3, "v1": via_v1, "bulk": via_bulk, "shm": via_shm, "nixl": via_nixl}
OPS = ("read", "write", "list", "delete")


def _needs(front: str) -> None:
    if front == "nixl" and not nixl_available():
        pytest.skip("nixl is not importable (install the extra: make test-nixl)")


def answers(srv: Serve, front: str, expected: dict[tuple[str, str], bool]) -> dict[str, bool]:
    got = {}
    for (tenant, ns) in expected:
        for op in OPS:
            r = FRONT_ENDS[front](srv, TENANT[tenant], ns, op)
            if r is not None:
                got[f"{tenant} {op} {ns}"] = r
    return got


def wanted(front: str, expected: dict[tuple[str, str], bool]) -> dict[str, bool]:
    want = {}
    for (tenant, ns), ok in expected.items():
        for op in OPS:
            if front in ("bulk", "shm", "nixl") and op == "list":
                continue
            if front in ("shm", "nixl") and op == "delete":
                continue
            want[f"{tenant} {op} {ns}"] = ok
    return want


# --- fixtures -------------------------------------------------------------------------------

def _seed_dev(tmp: Path, data: Path) -> None:
    """Development mode: the orphan namespace and its block, then a clean stop."""
    dev = Serve.start(tmp, data, "dev", None)
    try:
        c = s3(dev, ("", "AKIADEV", "dev-secret"))
        c.create_bucket(Bucket=ORPHAN)
        c.put_object(Bucket=ORPHAN, Key="k0", Body=BLOCK)
        dev.stop()
    finally:
        dev.kill()


def _seed_tenants(srv: Serve) -> None:
    c = s3(srv, ACME)
    for ns in ("acme-one", "shared-acme"):
        c.create_bucket(Bucket=ns)
        c.put_object(Bucket=ns, Key="k0", Body=BLOCK)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, Path, Path]]:
    tmp = tmp_path_factory.mktemp("auth-matrix")
    data, creds = tmp / "data", tmp / "tenants.json"
    creds.write_text(json.dumps(TENANTS))
    _seed_dev(tmp, data)
    srv = Serve.start(tmp, data, "creds", creds)
    try:
        _seed_tenants(srv)
        yield srv, data, creds
    finally:
        srv.kill()


# --- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("front", list(FRONT_ENDS))
def test_every_front_end_gives_the_policy_answers(world: tuple[Serve, Path, Path],
                                                  front: str) -> None:
    _needs(front)
    srv = world[0]
    assert answers(srv, front, ALLOWED) == wanted(front, ALLOWED)


@pytest.mark.parametrize("front", ["s3", "v1", "bulk"])
def test_create_is_decided_by_the_policy_too(world: tuple[Serve, Path, Path],
                                             front: str) -> None:
    """A tenant creates names its patterns allow; not another tenant's, not an ownerless one
    (S3 answers a taken name BucketAlreadyExists, as AWS does; the others AccessDenied)."""
    srv = world[0]

    def create(who: tuple[str, str, str], ns: str) -> bool | str:
        if front == "s3":
            from botocore.exceptions import ClientError

            try:
                s3(srv, who).create_bucket(Bucket=ns)
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            return True
        if front == "v1":
            status, body = v1(srv, who, "POST", "/v1/namespaces", {"name": ns})
            return True if status < 300 else str(body["error"]["name"])
        from kvstore_client import Client, KVStoreError

        try:
            with Client(port=srv.bulk, namespace=ns, access_key=who[1], secret_key=who[2],
                        create=True, retries=0, timeout=10) as c:
                c.ping()
        except KVStoreError as exc:
            return type(exc).__name__
        return True

    taken = "BucketAlreadyExists" if front == "s3" else "AccessDenied"
    assert create(GLOBEX, f"globex-{front}") is True
    assert create(GLOBEX, f"acme-{front}") == "AccessDenied"  # not its name
    assert create(GLOBEX, "shared-acme") == taken  # acme's
    assert create(ACME, ORPHAN) == "AccessDenied"  # ownerless
    assert create(GLOBEX, ORPHAN) == "AccessDenied"


def test_set_owner_gives_an_ownerless_namespace_to_one_tenant(tmp_path: Path) -> None:
    data, creds = tmp_path / "data", tmp_path / "tenants.json"
    creds.write_text(json.dumps(TENANTS))
    _seed_dev(tmp_path, data)
    srv = Serve.start(tmp_path, data, "before", creds)
    try:
        _seed_tenants(srv)
        busy = set_owner(data, ORPHAN, "globex", creds)  # the server holds the data dir
        assert busy.returncode == 1 and "lock" in busy.stderr.lower(), busy.stderr
        srv.stop()
    finally:
        srv.kill()
    nobody = set_owner(data, ORPHAN, "initech", creds)
    assert nobody.returncode == 1 and "no tenant 'initech'" in nobody.stderr
    missing = set_owner(data, "shared-none", "globex", creds)
    assert missing.returncode == 1 and "no namespace shared-none" in missing.stderr
    taken = set_owner(data, "shared-acme", "globex", creds)  # has an owner: needs --force
    assert taken.returncode == 1 and "--force" in taken.stderr
    done = set_owner(data, ORPHAN, "globex", creds)
    assert done.returncode == 0, done.stderr
    assert re.search(r"shared-orphan is now owned by globex", done.stdout)
    after = Serve.start(tmp_path, data, "after", creds)
    try:
        for front in FRONT_ENDS:
            if front == "nixl" and not _have_nixl():
                continue
            assert answers(after, front, ALLOWED_AFTER) == wanted(front, ALLOWED_AFTER), front
        after.stop()
    finally:
        after.kill()


def _have_nixl() -> bool:
    try:
        import nixl  # noqa: F401
    except ImportError:
        return False
    return True
