"""zoa_node killed (SIGKILL) at random moments of a bank save, 20 times: the bank file at the
path is always a complete bank that loads, and the next node autoloads it.

Each round is a real node process (``zoa_ros.ros.node.main``) on a tiny pack that autoloads the
bank, activates, and on SIGINT autosaves it; this test watches the bank's folder for the save's
temporary file and kills the node a random 0-0.5 ms after it appears, i.e. while the new bank is
being written (the kill is counted as landing in the save when the temporary file stays behind).
To keep 20+ node starts fast, the nodes are forked from one process that has imported the
node's modules already (a zygote), instead of each importing torch and rclpy afresh.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from zoa_ros.core.bank import file as bank_file

ZYGOTE = r"""
import json, os, signal, sys
import zoa_ros.core.adapt.registry, zoa_ros.core.bank.file, zoa_ros.core.engine  # noqa
from zoa_ros.ros import node
signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # the kernel reaps the killed nodes
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os._exit(node.main(request["argv"]))
    print(pid, flush=True)
"""
KILLS = 20


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sigkill_during_saves_never_loses_the_previous_bank(make_pack, tmp_path: Path) -> None:
    _, pack = make_pack("test_resnet", "w8a8")
    folder = tmp_path / "banks"
    bank = folder / "k.zoabank"
    env = {**os.environ, "ROS_DOMAIN_ID": str(90 + os.getpid() % 30),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    env.pop("RMW_IMPLEMENTATION", None)
    argv = ["--ros-args", "-p", f"pack:={pack}", "-p", f"knowledge.bank_path:={bank}",
            "-p", "adaptation.interval_frames:=8", "-p", "adaptation.batch_size:=8"]
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    rng = random.Random(0)
    interrupted = rounds = 0

    def start() -> tuple[int, Path]:
        log = tmp_path / f"node{rounds}.log"
        zygote.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        zygote.stdin.flush()
        pid = int(zygote.stdout.readline())
        _wait_for(lambda: "active: classifying" in _text(log), 60, f"node {rounds} active")
        return pid, log

    try:
        assert zygote.stdout.readline().strip() == "ready"
        pid, log = start()   # the first bank, saved in full
        os.kill(pid, signal.SIGINT)
        _wait_for(lambda: not _alive(pid), 30, "the first node's exit")
        assert "autosave on shutdown: saved" in _text(log), _text(log)
        while interrupted < KILLS:
            rounds += 1
            assert rounds <= 5 * KILLS, f"only {interrupted} of {rounds} kills hit a save"
            pid, log = start()
            assert "autoload: loaded" in _text(log), _text(log)   # the bank left behind
            os.kill(pid, signal.SIGINT)   # shutdown: the node autosaves
            while not any(_temporary(folder)) and _alive(pid):   # no sleep: a save is short
                pass
            time.sleep(rng.uniform(0.0, 0.0005))
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                _wait_for(lambda p=pid: not _alive(p), 10, "the kill")
            if any(_temporary(folder)):   # the kill landed while the new bank was written
                interrupted += 1
                for stale in _temporary(folder):
                    stale.unlink()
            state, meta = bank_file.read(bank)   # complete, unmodified: the old or the new
            assert meta["format"] == "zoa_ros.bank" and state.eps.numel() > 0
    finally:
        zygote.stdin.close()
        zygote.wait(10)
    print(f"{interrupted} of {rounds} kills landed in a save")
    assert interrupted == KILLS


def _temporary(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".k.zoabank.*.tmp")] if folder.is_dir() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
