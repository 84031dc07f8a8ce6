"""aws-cli (the ``awscli`` package of the test extra) against a live server: ``aws s3 cp`` of a
64 MiB file (the block limit) up and down, ``aws s3 sync`` twice, ``aws s3 rm --recursive``.

The CLI runs as a real subprocess (``python -m awscli``) with explicit credentials and region,
``AWS_EC2_METADATA_DISABLED=true``, its config and credentials files in the test's temporary
directory and HOME pointing there too, so no ``~/.aws`` of the machine is read.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kvstore import limits
from tests.api.conftest import LiveServer, boto_client

CLI_SECONDS_MAX = 120.0


class AwsCli:
    def __init__(self, srv: LiveServer, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "config").write_text("[default]\nregion = us-east-1\n"
                                     "s3 =\n    signature_version = s3v4\n")
        (home / "credentials").write_text("[default]\naws_access_key_id = AKIADEV\n"
                                          "aws_secret_access_key = dev-secret\n")
        self.url = srv.url
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_ACCESS_KEY_ID": "AKIADEV", "AWS_SECRET_ACCESS_KEY": "dev-secret",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
        }

    def __call__(self, *args: str) -> str:
        extra = ("--no-progress",) if args[:2] in (("s3", "cp"), ("s3", "sync")) else ()
        cmd = [sys.executable, "-m", "awscli", "--endpoint-url", self.url, *args, *extra]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                           timeout=CLI_SECONDS_MAX, check=False)
        assert r.returncode == 0, f"{' '.join(args)}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout


@pytest.fixture(scope="module")
def cli(module_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) \
        -> AwsCli:
    srv = module_server(capacity_bytes=1024 * limits.MiB, segment_bytes=128 * limits.MiB)
    return AwsCli(srv, tmp_path_factory.mktemp("awshome"))


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_cp_64_mib_up_and_down(cli: AwsCli, tmp_path: Path) -> None:
    cli("s3", "mb", "s3://cli-cp")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(limits.block_bytes_max))  # exactly the block limit
    cli("s3", "cp", str(src), "s3://cli-cp/big.bin")  # multipart: 8 MiB parts
    listed = cli("s3", "ls", "s3://cli-cp/")
    assert f"{limits.block_bytes_max} big.bin" in listed
    dst = tmp_path / "down.bin"
    cli("s3", "cp", "s3://cli-cp/big.bin", str(dst))  # ranged GETs in parallel
    assert dst.stat().st_size == limits.block_bytes_max
    assert _sha256(dst) == _sha256(src)


def _tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(300_000), "sub/deeper/c": b"",
             "sub/deeper/d d.txt": b"space in name", "big/e.bin": os.urandom(9 * limits.MiB)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_sync_twice_transfers_nothing_the_second_time(cli: AwsCli, tmp_path: Path) -> None:
    cli("s3", "mb", "s3://cli-sync")
    src = tmp_path / "src"
    files = _tree(src)
    first = cli("s3", "sync", str(src), "s3://cli-sync/tree/")
    assert first.count("upload:") == len(files), first
    second = cli("s3", "sync", str(src), "s3://cli-sync/tree/")
    assert second.strip() == "", second  # nothing changed: nothing sent
    # and back down, twice
    down = tmp_path / "down"
    got = cli("s3", "sync", "s3://cli-sync/tree/", str(down))
    assert got.count("download:") == len(files), got
    for rel, data in files.items():
        assert (down / rel).read_bytes() == data
    again = cli("s3", "sync", "s3://cli-sync/tree/", str(down))
    assert again.strip() == "", again
    # a changed file is sent again, and only that one
    (src / "a.txt").write_bytes(b"alpha, changed\n")
    third = cli("s3", "sync", str(src), "s3://cli-sync/tree/")
    assert third.count("upload:") == 1 and "a.txt" in third, third


def test_rm_recursive(cli: AwsCli, tmp_path: Path) -> None:
    cli("s3", "mb", "s3://cli-rm")
    src = tmp_path / "src"
    files = _tree(src)
    cli("s3", "sync", str(src), "s3://cli-rm/")
    s3 = boto_client(cli.url)
    assert s3.list_objects_v2(Bucket="cli-rm")["KeyCount"] == len(files)
    out = cli("s3", "rm", "--recursive", "s3://cli-rm/")
    assert out.count("delete:") == len(files), out
    assert s3.list_objects_v2(Bucket="cli-rm")["KeyCount"] == 0
    cli("s3", "rb", "s3://cli-rm")
    assert "cli-rm" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
