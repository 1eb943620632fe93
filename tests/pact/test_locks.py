"""pact.locks: one writer per directory, the refusal names the holder, the lock dies with its process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pact.locks import LOCK_NAME, DirectoryLock, DirectoryLockedError, lock_holder

HOLD = textwrap.dedent("""
    import sys, time
    from pact.locks import DirectoryLock, DirectoryLockedError
    try:
        lock = DirectoryLock(sys.argv[1], "output_dir=" + sys.argv[1]).acquire()
    except DirectoryLockedError as e:
        print("REFUSED", e, flush=True)
        sys.exit(3)
    print("LOCKED", flush=True)
    time.sleep(float(sys.argv[2]))
    print("DONE", flush=True)
""")


def _env():
    return dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _holder(tmp_path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run"), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "LOCKED"
    return proc


def test_second_writer_in_process_is_refused_and_names_the_holder(tmp_path):
    first = DirectoryLock(tmp_path / "run", "output_dir=run").acquire()
    with pytest.raises(DirectoryLockedError) as e:
        DirectoryLock(tmp_path / "run", "output_dir=run").acquire()
    msg = str(e.value)
    assert msg.startswith("output_dir=run is being written by pid ")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in msg
    first.release()
    with DirectoryLock(tmp_path / "run", "output_dir=run") as again:  # free once released
        assert again.held and lock_holder(tmp_path / "run")["pid"] == os.getpid()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the file stays, unlocked


def test_lock_held_by_another_process_then_freed_by_its_kill(tmp_path):
    proc = _holder(tmp_path, 60)
    try:
        with pytest.raises(DirectoryLockedError, match=f"pid {proc.pid} on "):
            DirectoryLock(tmp_path / "run", "output_dir=run").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with DirectoryLock(tmp_path / "run", "output_dir=run"):  # the kernel dropped the dead holder's lock
        pass


def test_two_processes_started_at_once_exactly_one_proceeds(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run"), "120"],
                              stdout=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    try:
        deadline = time.time() + 120
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert loser.returncode == 3
        assert winner.poll() is None and winner.stdout.readline().strip() == "LOCKED"
        assert f"pid {winner.pid} on " in loser.stdout.read()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_lock_creates_missing_directory(tmp_path):
    with DirectoryLock(tmp_path / "a" / "b", "ref_cache=a/b") as lock:
        assert lock.path.is_file()
