"""rclone and s3cmd (Debian's packages, installed by .ci/run) against a live server: the
generic S3 tools the ETag and listing fidelity work is for. Each runs as a real subprocess with
its own config file and HOME in the test's temporary directory, explicit credentials and region,
``AWS_EC2_METADATA_DISABLED=true`` and nothing of the machine's environment but PATH.

Shown: a folder synced twice, the second run transferring nothing (the tools compare sizes and
the MD5 ETags, rclone also its stored modtime); ``rclone check`` by hash and by download; a
multipart upload whose bytes come back whole; server-side copy and move; recursive delete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kvstore import limits
from tests.api.conftest import LiveServer

TOOL_SECONDS_MAX = 120.0
FILES = {"a.bin": 100_000, "b c.bin": 300_000, "sub/d+e.bin": 2 * limits.MiB,
         "sub/d\u00e9j\u00e0.txt": 6, "sub/deeper/big.bin": 12 * limits.MiB}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install Debian's {tool} package (.ci/run)")
        pytest.skip(f"needs Debian's {tool} package")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server(capacity_bytes=512 * limits.MiB, segment_bytes=64 * limits.MiB)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i, (name, size) in enumerate(FILES.items()):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(hashlib.shake_256(i.to_bytes(2, "little")).digest(size))
    return root


class Tool:
    def __init__(self, argv: list[str], home: Path) -> None:
        self.argv = argv
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1",
                    "no_proxy": "127.0.0.1", "LC_ALL": "C.UTF-8"}

    def __call__(self, *args: str) -> str:
        r = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True,
                           timeout=TOOL_SECONDS_MAX, check=False)
        assert r.returncode == 0, f"{' '.join(args)}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr


@pytest.fixture
def rclone(srv: LiveServer, tmp_path: Path) -> Tool:
    home = tmp_path / "rclone-home"
    home.mkdir()
    conf = home / "rclone.conf"
    conf.write_text(f"[kv]\ntype = s3\nprovider = Other\nendpoint = {srv.url}\n"
                    "access_key_id = AKIADEV\nsecret_access_key = dev-secret\n"
                    "region = us-east-1\nenv_auth = false\n")
    return Tool([need("rclone"), "--config", str(conf), "--ask-password=false"], home)


@pytest.fixture
def s3cmd(srv: LiveServer, tmp_path: Path) -> Tool:
    home = tmp_path / "s3cmd-home"
    home.mkdir()
    conf = home / "s3cfg"
    host = srv.url.removeprefix("http://")
    conf.write_text(f"[default]\naccess_key = AKIADEV\nsecret_key = dev-secret\n"
                    f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\n"
                    "signature_v2 = False\nbucket_location = us-east-1\n")
    return Tool([need("s3cmd"), "-c", str(conf)], home)


def test_rclone(rclone: Tool, src: Path, tmp_path: Path) -> None:
    rclone("mkdir", "kv:rclone-b")
    # multipart above 5 MiB (the 12 MiB file goes up in three parts)
    up = ("--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M")
    first = rclone("sync", str(src), "kv:rclone-b/d", "-v", *up)
    assert first.count(": Copied (new)") == len(FILES), first
    second = rclone("sync", str(src), "kv:rclone-b/d", "-v", *up)
    assert "Copied" not in second, second  # sizes, modtimes and MD5s all matched
    assert "0 differences found" in rclone("check", str(src), "kv:rclone-b/d")
    assert "0 differences found" in rclone("check", "--download", str(src), "kv:rclone-b/d")
    sums = dict(reversed(line.split("  ", 1)) for line in
                rclone("md5sum", "kv:rclone-b/d").splitlines() if "  " in line)
    assert sums == {name: hashlib.md5(data).hexdigest() for name, data in _tree(src).items()}
    down = tmp_path / "down"
    rclone("copy", "kv:rclone-b/d", str(down))
    assert _tree(down) == _tree(src)
    out = rclone("copyto", "kv:rclone-b/d/sub/deeper/big.bin", "kv:rclone-b/copy.bin", "-v")
    assert "server-side copy" in out
    rclone("moveto", "kv:rclone-b/copy.bin", "kv:rclone-b/moved.bin")
    listed = rclone("lsf", "kv:rclone-b")
    assert "moved.bin" in listed and "copy.bin" not in listed
    rclone("purge", "kv:rclone-b")
    assert "rclone-b" not in rclone("lsd", "kv:")


def test_s3cmd(s3cmd: Tool, src: Path, tmp_path: Path) -> None:
    s3cmd("mb", "s3://s3cmd-b")
    first = s3cmd("sync", f"{src}/", "s3://s3cmd-b/d/")
    assert first.count("upload:") >= len(FILES), first
    second = s3cmd("sync", f"{src}/", "s3://s3cmd-b/d/")
    assert "upload:" not in second, second  # sizes and MD5 ETags matched
    info = s3cmd("info", "s3://s3cmd-b/d/b c.bin")
    assert f"MD5 sum:   {hashlib.md5((src / 'b c.bin').read_bytes()).hexdigest()}" in info
    s3cmd("put", "--multipart-chunk-size-mb=5", str(src / "sub/deeper/big.bin"),
          "s3://s3cmd-b/mp.bin")
    s3cmd("cp", "s3://s3cmd-b/mp.bin", "s3://s3cmd-b/mp-copy.bin")
    down = tmp_path / "down"
    s3cmd("sync", "s3://s3cmd-b/d/", f"{down}/")
    assert _tree(down) == _tree(src)
    got = tmp_path / "mp-copy.bin"
    s3cmd("get", "s3://s3cmd-b/mp-copy.bin", str(got))
    assert got.read_bytes() == (src / "sub/deeper/big.bin").read_bytes()
    s3cmd("del", "--recursive", "--force", "s3://s3cmd-b/")
    assert s3cmd("ls", "--recursive", "s3://s3cmd-b").strip() == ""
    s3cmd("rb", "s3://s3cmd-b")
