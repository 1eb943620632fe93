"""DeepSpeed's CPU shm allreduce buffers are gone from /dev/shm when a run under the launcher ends."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pact.training.deepspeed_shm import SHM_DIR, shm_buffer_path

REPO = Path(__file__).resolve().parents[3]

#: two ranks start the process group the driver's way (pact.training.engine.init_distributed), check that their own buffer name is gone while the shm
#: allreduce (DeepSpeed's inference_all_reduce, which reads the mapped buffers) still sums over both ranks
SCRIPT = textwrap.dedent("""
    import os, torch, deepspeed.comm as dist
    from pact.training.engine import init_distributed
    from pact.training.deepspeed_shm import shm_buffer_path
    rank, world, _ = init_distributed(60)
    assert not shm_buffer_path(rank).exists(), shm_buffer_path(rank)
    t = torch.full((1024,), float(rank + 1))
    dist.inference_all_reduce(t)
    assert torch.all(t == 3.0), t[:4]
    print("shm ok", rank, flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm")
def test_two_rank_run_leaves_no_shm_buffer(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCH_EXTENSIONS_DIR=os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(tmp_path / "ext")))
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                           str(port), str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("shm ok") == 2, out[-3000:]
    names = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    left = [p for p in (shm_buffer_path(r, names) for r in range(2)) if p.exists()]
    assert not left, f"left in /dev/shm: {left}"


#: a handler registered before the process group starts runs after pact's (atexit runs last-in first-out)
EXIT_SCRIPT = textwrap.dedent("""
    import atexit, sys, torch.distributed as dist
    atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
    if sys.argv[1] == "driver":
        from pact.training.engine import init_distributed
        init_distributed(60)
    else:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=0, world_size=1)
        from pact.distributed import destroy_at_exit
        destroy_at_exit()
        destroy_at_exit()  # once per process: a second call registers nothing more
        dist.destroy_process_group()  # the program's own teardown: the handler leaves it alone
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=0, world_size=1)
    print("trained", flush=True)
""")


@pytest.mark.parametrize("how", ["driver", "explicit"])
def test_process_group_is_destroyed_before_interpreter_exit(tmp_path, how):
    """A gloo group left up can abort the interpreter's finalization (SIGABRT, 'terminate called without an
    active exception'); the driver's init_distributed registers its teardown, which runs at exit."""
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, str(script), how, str(_free_port()), str(_free_port())], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-2:] == ["trained", "initialized at exit: False"], proc.stdout


def test_a_stale_extension_build_lock_is_named(tmp_path, monkeypatch):
    """torch waits without end while the build lock of DeepSpeed's op exists (left by a process killed mid-build):
    an old one is named with the fix; a fresh one (a build running now) and none are not."""
    import time

    from pact.training.deepspeed_shm import SHM_OP_NAME, warn_stale_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert warn_stale_build_lock() is None
    lock = tmp_path / SHM_OP_NAME / "lock"
    lock.parent.mkdir()
    lock.touch()
    assert warn_stale_build_lock() is None
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match=rf"{lock} is 60 min old.*remove {lock}"):
        assert warn_stale_build_lock() == lock
