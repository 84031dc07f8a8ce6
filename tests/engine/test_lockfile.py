"""One owner per data directory: a second engine, in this process or another, is refused at
once with the directory and the holder's PID; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.engine.lockfile import LOCK_FILE, lock_dir
from kvstore.engine.store import Engine
from kvstore.errors import DataDirLocked

from .conftest import NS, Engines, pattern

REPO = Path(__file__).resolve().parents[2]
CHILD_SECONDS_MAX = 30

# Takes the lock of argv[1] the way Engine.open does, says so, and holds it until killed.
HOLDER = """
import sys, time
from kvstore.engine.lockfile import lock_dir
held = lock_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["real", "memory"])
def test_second_engine_in_one_process_is_refused(engines: Engines, kind: str) -> None:
    dev = engines.device(kind)
    first = engines.open(dev)
    first.put(NS, "k", pattern(1, 10_000))
    with pytest.raises(DataDirLocked) as err:
        Engine.open(first.config, dev)  # a second open file description: flock says no
    msg = str(err.value)
    assert first.config.data_dir in msg and f"PID {os.getpid()}" in msg
    assert err.value.detail == {"data_dir": first.config.data_dir, "pid": os.getpid()}
    assert first.get(NS, "k") == pattern(1, 10_000)  # the refused open touched nothing
    again = engines.reopen(first)  # close releases the lock
    assert again.get(NS, "k") == pattern(1, 10_000)


def test_lock_held_by_another_process(engines: Engines) -> None:
    cfg = engines.config()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'clients'}")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, cfg.data_dir], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # bounded: the child exits (EOF) if it cannot lock
        assert line == b"locked\n", child.stderr.read() if child.stderr else b""
        dev = engines.device("real")
        with pytest.raises(DataDirLocked) as err:
            Engine.open(cfg, dev)
        assert f"PID {child.pid}" in str(err.value) and cfg.data_dir in str(err.value)
        assert not [n for n in os.listdir(cfg.data_dir) if n != LOCK_FILE]  # no recovery ran
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(CHILD_SECONDS_MAX)
    eng = engines.open(dev, cfg)  # the kernel dropped the dead holder's lock
    eng.put(NS, "k", b"v")


def test_failed_open_releases_the_lock(engines: Engines) -> None:
    cfg = engines.config()
    os.makedirs(cfg.data_dir)
    catalog = Path(cfg.data_dir) / "namespaces.msgpack"
    catalog.write_bytes(b"\xc1 not msgpack")
    dev = engines.device("real")
    for _ in range(2):  # the same error both times, never DataDirLocked
        with pytest.raises(ValueError):  # msgpack's FormatError
            Engine.open(cfg, dev)
    catalog.unlink()
    engines.open(dev, cfg)


def test_release_is_idempotent_and_the_file_stays(tmp_path: Path) -> None:
    held = lock_dir(str(tmp_path / "d"))
    assert held.held
    with pytest.raises(DataDirLocked):
        lock_dir(str(tmp_path / "d"))
    held.release()
    held.release()
    assert not held.held and (tmp_path / "d" / LOCK_FILE).exists()
    lock_dir(str(tmp_path / "d")).release()
