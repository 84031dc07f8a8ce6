"""``/ui`` in a real headless Chromium (Debian's ``chromium``): the numbers the page shows are
the ones ``/v1/stats`` serves, and a screenshot of it is written. Also the per-operation
latency histograms ``/v1/stats`` returns for it."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from kvstore.api.metrics import LATENCY_BUCKETS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags the issue names: no sandbox (root in CI), nothing phoning out
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--mute-audio"]
BROWSER_SECONDS_MAX = 60


def _need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium package (.ci/run)")
        pytest.skip("needs Debian's chromium package")
    return CHROMIUM


def _get(srv: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _traffic(srv: Any) -> None:
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    s3 = boto3.client("s3", endpoint_url=srv.url, region_name="us-east-1",
                      aws_access_key_id="dev", aws_secret_access_key="dev",
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    for ns, n, size in (("ui-alpha", 12, 3000), ("ui-beta", 5, 70_000)):
        s3.create_bucket(Bucket=ns)
        for i in range(n):
            s3.put_object(Bucket=ns, Key=f"k{i}", Body=os.urandom(size))
        for i in range(n):
            s3.get_object(Bucket=ns, Key=f"k{i}")["Body"].read()
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="ui-alpha", Key="absent")


class _Dom(HTMLParser):
    """Text and data attributes of the elements the test reads, by id and by namespace row."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.attrs_by_id: dict[str, dict[str, str]] = {}
        self.ns: dict[str, dict[str, int]] = {}
        self._open: list[str | None] = []
        self._row: str | None = None
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if tag == "tr" and "data-ns" in a:
            self._row = a["data-ns"]
            self.ns[self._row] = {}
        if self._row and "data-blocks" in a:
            self.ns[self._row]["blocks"] = int(a["data-blocks"])
        if self._row and "data-bytes" in a:
            self.ns[self._row]["bytes"] = int(a["data-bytes"])
        ident = a.get("id")
        if ident:
            self.attrs_by_id[ident] = a
            self.by_id.setdefault(ident, "")
        self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.by_id[ident] += data


def test_stats_carry_latency_histograms_per_operation(live_server: Any) -> None:
    srv = live_server()
    _traffic(srv)
    status, _, raw = _get(srv, "/v1/stats")
    st = json.loads(raw)
    assert status == 200 and st["uptime_seconds"] > 0
    put, get = st["ops"]["put"], st["ops"]["get"]
    assert put["count"] == 17 and put["bytes"] == 12 * 3000 + 5 * 70_000
    assert get["count"] >= 17
    counts = [c for _, c in get["buckets"]]
    assert [le for le, _ in get["buckets"]] == list(LATENCY_BUCKETS)
    assert counts == sorted(counts) and counts[-1] <= get["count"]  # cumulative


def test_ui_shows_what_v1_stats_serves(live_server: Any, tmp_path: Path) -> None:
    chromium = _need_chromium()
    srv = live_server()
    _traffic(srv)
    status, headers, page = _get(srv, "/ui")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"http://" not in page.replace(b'href="/', b"")  # nothing loaded from elsewhere
    for asset in ("/ui/app.js", "/ui/app.css"):
        assert _get(srv, asset)[0] == 200
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000",
         "--dump-dom", f"{srv.url}/ui"],
        capture_output=True, text=True, timeout=BROWSER_SECONDS_MAX, check=True).stdout
    st = json.loads(_get(srv, "/v1/stats")[2])  # no traffic since: the same numbers
    d = _Dom()
    d.feed(dom)
    assert d.body.get("data-loaded") == "1", dom[-3000:]
    assert int(d.attrs_by_id["blocks"]["data-value"]) == st["stats"]["blocks"] == 17
    assert d.ns == {name: {"blocks": u["blocks"], "bytes": u["bytes"]}
                    for name, u in st["namespaces"].items()}
    assert d.ns["ui-beta"] == {"blocks": 5, "bytes": 5 * 70_000}
    s = st["stats"]
    hits = s["hits_dram"] + s["hits_flash"]
    assert d.by_id["hit-rate-total"] == f"{100 * hits / (hits + s['misses']):.1f}%"
    assert d.by_id["ready"] == "ready" and d.by_id["device"] == st["device"]
    assert d.by_id["error"] == ""
    shot = tmp_path / "ui.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    "--virtual-time-budget=5000", "--window-size=1280,900",
                    f"--screenshot={shot}", f"{srv.url}/ui"],
                   capture_output=True, timeout=BROWSER_SECONDS_MAX, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
