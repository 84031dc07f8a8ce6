"""A real headless Chromium (Debian's ``chromium``) for the ``/ui`` tests: the flags the issue
names, a parser of the page's DOM, and a small DevTools-protocol driver for what ``--dump-dom``
cannot do (type into the sign-in form, read sessionStorage, see every request the page sent).

The driver speaks CDP over the websocket Chromium opens on 127.0.0.1 (``--remote-debugging-port=0``
writes the port it chose to ``DevToolsActivePort`` in the profile); ``websockets`` is installed
with ``uvicorn[standard]``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags the issue names: no sandbox (root in CI), nothing phoning out
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--mute-audio"]
BROWSER_SECONDS_MAX = 60
CALL_SECONDS_MAX = 30.0


def need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium package (.ci/run)")
        pytest.skip("needs Debian's chromium package")
    return CHROMIUM


class Dom(HTMLParser):
    """Text and data attributes of the elements the tests read, by id and by namespace row."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.attrs_by_id: dict[str, dict[str, str]] = {}
        self.ns: dict[str, dict[str, int]] = {}
        self._open: list[str | None] = []
        self._row: str | None = None
        self.body: dict[str, str] = {}
        if text:
            self.feed(text)

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
        if tag not in ("input", "meta", "link", "br", "img"):  # void elements have no end tag
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


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path, flags: Sequence[str] = ()) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile.parent / f"{profile.name}-chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [need_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1280,900", *flags, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            port = self._port(profile / "DevToolsActivePort")
            url = self._page_socket(port)
            # our own socket to 127.0.0.1 (no proxy from the environment), entered as a context
            # manager: what every websockets version uvicorn[standard] allows (>= 13) accepts
            sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_SECONDS_MAX)
            self.ws = connect(url, sock=sock, max_size=2**26,
                              open_timeout=CALL_SECONDS_MAX).__enter__()
        except BaseException:
            self._stop()
            raise
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + BROWSER_SECONDS_MAX
        while not (path.exists() and path.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CdpError("chromium did not open its DevTools port")
            time.sleep(0.05)
        return int(path.read_text().split()[0])

    def _page_socket(self, port: int) -> str:
        deadline = time.monotonic() + BROWSER_SECONDS_MAX
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_SECONDS_MAX)
            try:
                conn.request("GET", "/json/list")
                pages = [t for t in json.loads(conn.getresponse().read()) if t["type"] == "page"]
            finally:
                conn.close()
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise CdpError("chromium opened no page")
            time.sleep(0.05)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        ident = self._id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_SECONDS_MAX
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise CdpError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body !== null")

    def wait_for(self, expression: str, seconds: float = BROWSER_SECONDS_MAX) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out waiting for {expression}; page: "
                               f"{self.html()[-2000:]}")
            time.sleep(0.1)

    def type_into(self, element_id: str, text: str) -> None:
        """Focus the element and type ``text`` (real input events, as a keyboard would)."""
        self.evaluate(f"document.getElementById({json.dumps(element_id)}).focus()")
        self.call("Input.insertText", text=text)

    def click(self, element_id: str) -> None:
        self.evaluate(f"document.getElementById({json.dumps(element_id)}).click()")

    def html(self) -> str:
        return str(self.evaluate("document.documentElement.outerHTML"))

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def requests(self) -> list[dict[str, Any]]:
        """Every request the page sent so far, as CDP saw it (URL, headers as sent, body)."""
        self.evaluate("1")  # drain the events that came before
        return [e["params"] for e in self.events
                if e["method"] in ("Network.requestWillBeSent",
                                   "Network.requestWillBeSentExtraInfo")]

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self._stop()
