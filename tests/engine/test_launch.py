"""``launch`` with spawned gloo CPU workers: they die with their launcher, and the rendezvous port
chosen by ``--dist-url auto`` cannot be taken by another process before the workers use it."""

from __future__ import annotations

import datetime
import errno
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.train_net import REPO

from sqr.engine import launch

# By module path: the name sqr.engine.launch is the launch function, re-exported.
launch_module = importlib.import_module("sqr.engine.launch")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and prctl, which are Linux only"
)

# Spawned workers unpickle their entry point by module name, so it lives in a real module
# (written to a temporary directory) rather than in this file, which pytest imports under a
# name that the workers could not import.
WORKERS_MODULE = "sqr_launch_test_workers"
WORKERS_SOURCE = '''
"""Entry points for the workers spawned by tests/engine/test_launch.py."""

import ctypes
import importlib
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

# By module path: the name sqr.engine.launch is the launch function, re-exported.
launch_module = importlib.import_module("sqr.engine.launch")

# A spawned worker imports this module while it unpickles its arguments, that is before the
# launch code arms the parent-death signal, which gives the tests a hook into that moment.
# The launcher imports it too, and must not take these hooks.
IN_WORKER = os.environ.get("SQR_TEST_LAUNCHER_PID") == str(os.getppid())
MODE = os.environ.get("SQR_TEST_LAUNCH_MODE")
if IN_WORKER and MODE == "watchdog":
    # The path of a platform without prctl.
    launch_module._set_parent_death_signal = lambda sig: False
elif IN_WORKER and MODE == "launcher_dies_first":
    # Tell the test that this worker has started, then wait for it to kill the launcher.
    launcher_pid = os.getppid()
    Path(os.environ["SQR_TEST_OUT_DIR"], f"{os.getpid()}.started").write_text("")
    deadline = time.monotonic() + 60
    while os.getppid() == launcher_pid and time.monotonic() < deadline:
        time.sleep(0.05)

PR_GET_PDEATHSIG = 2


def write_pid_and_sleep(out_dir: str) -> None:
    """Write "<pid> <parent-death signal>" to rank<R>.pid, then idle until killed."""
    sig = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig))
    path = Path(out_dir) / f"rank{dist.get_rank()}.pid"
    partial = path.with_suffix(".partial")
    partial.write_text(f"{os.getpid()} {sig.value}")
    partial.rename(path)  # the test polls for the file: it must never see it half-written
    while True:
        time.sleep(0.1)


def write_rank_sum(out_dir: str) -> None:
    """All-reduce rank + 1 and write the sum to rank<R>.sum."""
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    (Path(out_dir) / f"rank{dist.get_rank()}.sum").write_text(str(total.item()))
'''

# A launcher started with "&" from a script ignores SIGINT, and so do the workers it spawns:
# torch's own parent-death signal (SIGINT) does not stop them.
LAUNCHER_SCRIPT = """
import datetime, os, signal, sys
os.environ["SQR_TEST_LAUNCHER_PID"] = str(os.getpid())
from sqr.engine import launch
import sqr_launch_test_workers as workers
signal.signal(signal.SIGINT, signal.SIG_IGN)
launch(workers.write_pid_and_sleep, 2, args=(sys.argv[1],), device="cpu",
       timeout=datetime.timedelta(seconds=60))
"""


@pytest.fixture(scope="module")
def workers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("launch_workers")
    (path / f"{WORKERS_MODULE}.py").write_text(WORKERS_SOURCE)
    return path


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited; a zombie that no one has reaped yet counts as exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] in ("Z", "X")


def wait_for_files(
    out: Path, pattern: str, count: int, launcher: subprocess.Popen, log: Path
) -> list[Path]:
    """The ``count`` files matching ``pattern`` in ``out``, once all are there."""
    deadline = time.monotonic() + 60  # two spawned interpreters importing torch on a busy CPU
    while len(paths := sorted(out.glob(pattern))) < count:
        if launcher.poll() is not None:
            pytest.fail(f"launcher exited with {launcher.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {count} {pattern} within 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["prctl", "watchdog", "launcher_dies_first"])
def test_workers_exit_when_launcher_is_killed(workers_dir: Path, tmp_path: Path, mode: str) -> None:
    """``kill -9`` of the launcher ends its workers: through the parent-death signal, through
    the watchdog where there is none, and when the launcher dies before either is armed."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(workers_dir), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "SQR_TEST_LAUNCH_MODE": mode,
        "SQR_TEST_OUT_DIR": str(tmp_path),
    }
    log = tmp_path / "launcher.log"
    worker_pids: list[int] = []
    with open(log, "w") as log_file:
        launcher = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER_SCRIPT, str(tmp_path)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        if mode == "launcher_dies_first":
            started = wait_for_files(tmp_path, "*.started", 2, launcher, log)
            worker_pids = [int(p.name.split(".")[0]) for p in started]
        else:
            pid_files = wait_for_files(tmp_path, "rank*.pid", 2, launcher, log)
            records = [p.read_text().split() for p in pid_files]
            worker_pids = [int(pid) for pid, _ in records]
            death_signals = [int(sig) for _, sig in records]
        launcher.kill()
        launcher.wait()
        # The watchdog polls once a second; 10 s leaves room for a loaded machine.
        deadline = time.monotonic() + 10
        while not all(map(is_gone, worker_pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in worker_pids if not is_gone(pid)]
        assert not survivors, f"workers {survivors} still run 10 s after their launcher was killed"
        if mode == "prctl":
            assert death_signals == [signal.SIGKILL] * 2, death_signals
        elif mode == "watchdog":
            # Only torch's SIGINT, which these workers ignore: the watchdog ended them.
            assert signal.SIGKILL not in death_signals, death_signals
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in worker_pids:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_auto_port_cannot_be_taken_before_workers_bind_it(
    workers_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process tries to bind the chosen port just before the workers are spawned: it
    must be refused, and the job must still run."""
    monkeypatch.syspath_prepend(str(workers_dir))  # spawned workers inherit sys.path
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    workers = importlib.import_module(WORKERS_MODULE)
    start_processes = launch_module.mp.start_processes
    thief_errors: list[int | None] = []

    def start_processes_with_thief(fn, **kwargs):
        url = next(a for a in kwargs["args"] if isinstance(a, str) and a.startswith("tcp://"))
        thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            try:
                # Held (when it succeeds) until the workers are done, as a real thief would.
                thief.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
                thief_errors.append(None)
            except OSError as e:
                thief_errors.append(e.errno)
            return start_processes(fn, **kwargs)
        finally:
            thief.close()

    monkeypatch.setattr(launch_module.mp, "start_processes", start_processes_with_thief)
    launch(
        workers.write_rank_sum,
        2,
        args=(str(tmp_path),),
        device="cpu",
        timeout=datetime.timedelta(seconds=30),
    )
    assert thief_errors == [errno.EADDRINUSE], "another process could bind the rendezvous port"
    # 1 + 2 on both ranks: the workers met through the port that the thief could not take.
    assert [(tmp_path / f"rank{r}.sum").read_text() for r in (0, 1)] == ["3.0", "3.0"]


def refuse_to_spawn(*args, **kwargs):
    raise AssertionError("launch spawned processes")


@pytest.mark.parametrize("num_gpus", [0, -1])
def test_no_processes_is_an_error(num_gpus: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_module.mp, "start_processes", refuse_to_spawn)
    ran = []
    with pytest.raises(ValueError, match=rf"--num-gpus {num_gpus}: .* at least 1"):
        launch(lambda: ran.append(1), num_gpus, device="cpu")
    assert not ran


def test_more_cpu_ranks_than_cores_needs_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned = []
    monkeypatch.setattr(launch_module, "_available_cores", lambda: 2)
    monkeypatch.setattr(launch_module.mp, "start_processes", lambda *a, **k: spawned.append(k))
    with pytest.raises(ValueError) as info:
        launch(print, 3, device="cpu", dist_url="tcp://127.0.0.1:1")
    message = str(info.value)
    assert "--num-gpus 3 train.device=cpu: 3 CPU processes on 2 cores" in message
    assert "--allow-oversubscribe" in message
    assert re.search(r"at least \d+ MiB per process \(this launcher's (private|peak) ", message)
    assert not spawned
    # Asked for, it goes ahead.
    launch(print, 3, device="cpu", dist_url="tcp://127.0.0.1:1", allow_oversubscribe=True)
    assert spawned and spawned[0]["nprocs"] == 3
    # CUDA processes are counted against the devices, not the cores.
    spawned.clear()
    monkeypatch.setattr(launch_module.torch.cuda, "device_count", lambda: 4)
    launch(print, 3, device="cuda", dist_url="tcp://127.0.0.1:1")
    assert spawned


def test_allow_oversubscribe_is_a_flag() -> None:
    from sqr.engine import default_argument_parser

    parser = default_argument_parser()
    assert not parser.parse_args(["--config-file", "c.py"]).allow_oversubscribe
    args = parser.parse_args(["--config-file", "c.py", "--num-gpus", "8", "--allow-oversubscribe"])
    assert args.allow_oversubscribe
