"""``/ui`` in a real headless Chromium (Debian's ``chromium``), development mode: the numbers the
page shows are the ones ``/v1/stats`` serves, and a screenshot of it is written. Also the
per-operation latency histograms ``/v1/stats`` returns for it. With credentials on:
test_ui_auth.py."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from kvstore.api.metrics import LATENCY_BUCKETS
from tests.api.browser import BROWSER_SECONDS_MAX, CHROMIUM_FLAGS, Dom, need_chromium


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
    chromium = need_chromium()
    srv = live_server()
    _traffic(srv)
    status, headers, page = _get(srv, "/ui")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"http://" not in page.replace(b'href="/', b"")  # nothing loaded from elsewhere
    for asset in ("/ui/app.js", "/ui/sigv4.js", "/ui/app.css"):
        assert _get(srv, asset)[0] == 200
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000",
         "--dump-dom", f"{srv.url}/ui"],
        capture_output=True, text=True, timeout=BROWSER_SECONDS_MAX, check=True).stdout
    st = json.loads(_get(srv, "/v1/stats")[2])  # no traffic since: the same numbers
    d = Dom(dom)
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
    assert d.body.get("data-auth") == "open"  # development mode: nothing to sign
    assert d.attrs_by_id["signin"].get("hidden") is not None
    shot = tmp_path / "ui.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    "--virtual-time-budget=5000", "--window-size=1280,900",
                    f"--screenshot={shot}", f"{srv.url}/ui"],
                   capture_output=True, timeout=BROWSER_SECONDS_MAX, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
