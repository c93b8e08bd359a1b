"""What runs in a worker process, local or on a Ray node: one recording through ``zoa-ros
replay``'s own code (:func:`run_job`), and the probe that measures what one replay costs
(:func:`measure_cost`).

A job carries everything a worker on another machine needs except the recording, which it opens
at the path the job names: the replay options, the knowledge bank to load (as bytes) and the
names under which the driver will store the outputs. The pack arrives once per worker process,
as a path (local pool) or as bytes from Ray's object store, and stays loaded for the worker's
later jobs. The worker writes nothing that outlives the job: the result, the bank it ended with
and everything the replay printed go back to the driver, which stores them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import resource
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zoa_ros

MIB = 1 << 20
_PACKS: dict[str, object] = {}   # fingerprint -> ModelPack, for this worker's later jobs


@dataclass(frozen=True)
class BagJob:
    """One replay. ``options``: ``zoa-ros replay`` options after the bag (methods, mode, ...;
    not --pack, --json or the bank files). ``*_name``: how the result refers to the pack, the
    loaded bank and its own files (the driver's paths, not the worker's temporary ones)."""

    key: str
    bag: str
    options: tuple[str, ...]
    pack_name: str
    json_name: str
    bank_method: str | None = None
    bank_out_name: str = ""
    bank_in: bytes | None = None
    bank_in_name: str = ""
    provenance: tuple[tuple[str, str], ...] = ()
    threads: int = 1
    memory_mb: int = 0   # what the scheduler reserves for the job (Ray: the task's memory)


@dataclass(frozen=True)
class BagOutcome:
    """A finished replay: its result, the bank it ended with, what it printed, how long the
    job took in the worker and where it ran."""

    key: str
    result: dict
    bank: bytes | None
    log: str
    seconds: float
    host: str
    pid: int
    version: str
    node: str = ""    # the Ray node it ran on ("" in the local pool)


class BagFailed(Exception):
    """A replay that failed: ``reason`` (one line, what ``zoa-ros replay`` would have said) and
    ``log`` (what it printed before)."""

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason, log)
        self.reason, self.log = reason, log

    def __str__(self) -> str:
        return self.reason


def replay_argv(job: BagJob, json_path: str, bank_in: str | None, bank_out: str | None
                ) -> list[str]:
    """The ``zoa-ros replay`` command line of ``job`` with the given file paths."""
    argv = ["replay", job.bag, "--pack", job.pack_name, *job.options, "--json", json_path]
    if bank_in is not None:
        argv += ["--load-bank", bank_in]
    if bank_out is not None:
        argv += ["--save-bank", bank_out, "--save-bank-method", str(job.bank_method)]
    return argv


def run_job(job: BagJob, fingerprint: str, pack: str | bytes) -> BagOutcome:
    """Replay ``job.bag`` with the pack (a path or the file's bytes) whose fingerprint is
    ``fingerprint``; :class:`BagFailed` with the reason if the replay fails."""
    import torch

    from zoa_ros.tools.replay import replay_offline

    start = time.perf_counter()
    torch.set_num_threads(job.threads)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="zoa-fleet-") as tmp:
        files = {"json": os.path.join(tmp, "result.json"),
                 "in": os.path.join(tmp, "in.zoabank") if job.bank_in is not None else None,
                 "out": os.path.join(tmp, "out.zoabank") if job.bank_method else None}
        names = {files["json"]: job.json_name, files["in"]: job.bank_in_name,
                 files["out"]: job.bank_out_name}
        try:
            if files["in"] is not None:
                Path(files["in"]).write_bytes(job.bank_in)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                args = _replay_parser().parse_args(
                    replay_argv(job, files["json"], files["in"], files["out"]))
                result = replay_offline(args, _pack(fingerprint, pack), dict(job.provenance))
            bank = None
            if files["out"] is not None and os.path.exists(files["out"]):
                bank = _relabel_bank(Path(files["out"]).read_bytes(), files["out"],
                                     job.bank_out_name)
        except (Exception, SystemExit) as e:
            raise BagFailed(_reason(e, log.getvalue()), log.getvalue()) from None
    result["config"] = _renamed(result["config"], names)
    return BagOutcome(job.key, result, bank, log.getvalue(), time.perf_counter() - start,
                      socket.gethostname(), os.getpid(), zoa_ros.__version__, _ray_node())


def measure_cost(fingerprint: str, pack: str | bytes, methods: list[str], mode: str,
                 batch_size: int, method_configs: dict, threads: int) -> dict:
    """What one replay costs in a fresh worker process: its peak resident memory (imports,
    pack, one engine per method and two adaptation batches of frames through them) and the
    engine time per frame, measured on the photos bundled with scikit-image."""
    import torch

    from zoa_ros.core.data.stream import CorruptionStream
    from zoa_ros.core.eval.evaluation import evaluate
    from zoa_ros.core.files.sample_photos import PHOTOS, load_photo
    from zoa_ros.core.model.preprocess import Preprocessor

    torch.set_num_threads(threads)
    baseline = _peak_rss_mb()
    model_pack = _pack(fingerprint, pack)
    crop = Preprocessor(model_pack.data_config).crop
    photos = [crop(load_photo(name)) for name in PHOTOS]
    n = 2 * batch_size
    crops = [photos[i % len(photos)] for i in range(n)]
    stream = CorruptionStream(crops, [0] * n, list(range(n)), ["clean"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = evaluate(model_pack, stream, methods, mode=mode, batch_size=batch_size,
                          method_configs=method_configs, progress=False)
    return {"peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": baseline, "frames": n,
            "seconds": time.perf_counter() - start, "threads": threads,
            "frame_bytes": int(crops[0].nbytes),
            "ms_per_frame": {m: r["costs"]["ms_per_frame"]
                             for m, r in result["methods"].items()},
            "host": socket.gethostname()}


def _pack(fingerprint: str, pack: str | bytes) -> object:
    """The worker's copy of the pack, loaded on its first job."""
    if fingerprint not in _PACKS:
        from zoa_ros.core.model.pack import ModelPack

        loaded = ModelPack.from_bytes(pack) if isinstance(pack, bytes) else ModelPack.load(pack)
        if loaded.fingerprint != fingerprint:
            raise ValueError(f"the pack changed since the fleet run started (fingerprint "
                             f"{loaded.fingerprint[:12]}, expected {fingerprint[:12]})")
        _PACKS[fingerprint] = loaded
    return _PACKS[fingerprint]


def _replay_parser() -> argparse.ArgumentParser:
    """``zoa-ros replay``'s own argument parser."""
    from zoa_ros.tools import replay

    parser = argparse.ArgumentParser(prog="zoa-ros")
    replay.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _relabel_bank(data: bytes, written: str, name: str) -> bytes:
    """The bank file with the entries it stored naming ``name`` as their file instead of the
    worker's temporary ``written`` (the tensors are unchanged)."""
    from zoa_ros.core.bank import file as bank_file

    state, meta = bank_file.decode(data, name)
    state.origins = tuple(
        None if o is None else dataclasses.replace(o, source=name) if o.source == written else o
        for o in state.entry_origins())
    return bank_file.encode(state, meta["pack_fingerprint"], meta.get("provenance"), name)


def _renamed(value: object, names: dict) -> object:
    """``value`` with every string that is a key of ``names`` replaced by its value."""
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    if isinstance(value, str) and value in names:
        return names[value]
    return value


def _reason(error: BaseException, log: str) -> str:
    """One line: the message ``zoa-ros replay`` prints for its own errors, else the type too."""
    if isinstance(error, SystemExit):   # argparse printed why
        lines = log.strip().splitlines()
        return f"bad replay options: {lines[-1] if lines else error.code}"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, ValueError | FileNotFoundError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _ray_node() -> str:
    """The id of the Ray node this runs on, in a Ray worker; else ""."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (MIB if sys.platform == "darwin" else 1024.0)
