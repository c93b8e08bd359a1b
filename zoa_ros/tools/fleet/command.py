"""``zoa-ros fleet``: replay many recordings - a fleet's missions - in one command, on this
machine's cores or a Ray cluster, and write one report: per bag, per robot and fleet-wide accuracy
(or agreement with no adaptation), the harm table against no adaptation, costs per frame, the
banks produced, the robots' banks merged into a fleet bank and, with --holdout-split, whether
that fleet bank helps on missions none of its robots' banks saw.

Every bag is replayed by ``zoa-ros replay``'s own code with the same options (the method
``none`` always runs, as the reference). Results are stored under OUT/results as they come, keyed
by content hashes of bag, pack, options and loaded bank: a rerun, e.g. after an interruption,
skips every replay whose result is there. A bag that fails (corrupt file, wrong topic) is retried
once and then reported with its reason; the others' results are kept. Exit status 1 if any bag
failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from zoa_ros.core.adapt.registry import method_class
from zoa_ros.core.adapt.zoa import ZOAConfig
from zoa_ros.core.bank.file import BankError
from zoa_ros.core.bank.merge import merge_files
from zoa_ros.core.data.bags.files import IMAGE_TYPES, open_bag, pick_topic
from zoa_ros.core.eval.fleet.aggregate import DONE, summarize
from zoa_ros.core.eval.fleet.keys import canonical, task_key
from zoa_ros.core.eval.fleet.manifest import FleetBag, collect, mission_order
from zoa_ros.core.eval.fleet.plan import (
    HOLDOUT_EMPTY,
    HOLDOUT_FLEET,
    ChainSchedule,
    Ready,
    chains,
    split_holdout,
)
from zoa_ros.core.files.atomic import atomic_write_bytes
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.tools.evaluation_cli import add_method_arguments, parse_method_config
from zoa_ros.tools.fleet.executors import LocalPool, RayExecutor
from zoa_ros.tools.fleet.report import print_summary, write_fleet_report
from zoa_ros.tools.fleet.runner import Progress, run_phase
from zoa_ros.tools.fleet.store import ResultStore
from zoa_ros.tools.fleet.worker import MIB, BagJob, replay_argv
from zoa_ros.tools.packs import resolve_pack

MEMORY_MARGIN = 1.25   # reserved per job: the probe's peak resident memory times this, ...
MEMORY_STEP_MB = 64    # ... plus the job's decoded frames, rounded up to this


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="replay many recordings (robots, missions) into one report",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="BAGS",
                   help="bag folders or .mcap/.db3 files, folders of bags, glob patterns "
                        "(quoted), or a manifest CSV with the header bag,robot,mission[,split]")
    add_method_arguments(p)
    p.add_argument("--out", required=True, help="folder for fleet.json, report.md, the plots, "
                                                "the fleet bank and results/")
    p.add_argument("--image-topic", help="camera topic (default: each bag's only image topic)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--label-topic", help="label topic (default: the topic named 'labels' "
                                              "in each bag, if any)")
    labels.add_argument("--no-labels", action="store_true",
                        help="ignore labels: agreement with none only")
    p.add_argument("--limit", type=int, help="only the first N usable frames of each bag")
    banks = p.add_argument_group("knowledge banks")
    banks.add_argument("--bank-method", default="zoa",
                       help="the method whose banks are saved, carried and merged (default "
                            "%(default)s; ignored when not among --methods)")
    banks.add_argument("--carry-bank", action="store_true",
                       help="per robot, missions in order: mission k+1 loads the bank mission k "
                            "ended with (needs a manifest); robots run in parallel")
    banks.add_argument("--holdout-split", metavar="SPLIT",
                       help="keep the manifest's bags of this split out of the missions; replay "
                            "them afterwards from the merged fleet bank and from an empty bank")
    banks.add_argument("--merge-capacity", type=int, default=ZOAConfig().capacity,
                       help="entries kept in the fleet bank (default %(default)s)")
    where = p.add_argument_group(
        "where it runs", "Default: a pool of local processes, as many as CPUs and memory allow\n"
        "for the measured cost of one replay. --ray: tasks on a Ray cluster\n"
        "(pip install 'zoa_ros[fleet]'), each asking for --task-cpus CPUs and the measured\n"
        "memory; every node must see the bags at the paths given here.")
    where.add_argument("--workers", type=int,
                       help="local processes (with --ray and no cluster to join: the CPUs of "
                            "the local Ray instance)")
    where.add_argument("--ray", nargs="?", const="auto", metavar="auto|local|ADDRESS",
                       help="run on Ray: 'auto' joins this machine's cluster (RAY_ADDRESS, "
                            "'ray start') or starts a local one; 'local' always starts a local "
                            "one; ADDRESS joins that cluster (HOST:6379 or ray://HOST:10001)")
    where.add_argument("--task-cpus", type=int, default=1,
                       help="CPUs (torch threads) per replay (default %(default)s)")
    where.add_argument("--task-memory-mb", type=int,
                       help="memory per replay instead of the measured one")
    p.add_argument("--rerun", action="store_true",
                   help="replay every bag again even where a stored result matches")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    fleet = FleetRun(args)
    try:
        return fleet.run()
    finally:
        fleet.close()


class FleetRun:
    """One ``zoa-ros fleet`` invocation: checks, plan, phases, merge, report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        _check_numbers(args)
        self.methods = args.methods if "none" in args.methods else ["none", *args.methods]
        self.method_configs = parse_method_config(args.method_config, self.methods)
        self.bank_method = args.bank_method if args.bank_method in self.methods else None
        if self.bank_method and not hasattr(method_class(self.bank_method), "export_bank"):
            raise ValueError(f"--bank-method {self.bank_method!r} keeps no knowledge bank")
        if (args.carry_bank or args.holdout_split) and self.bank_method is None:
            raise ValueError("--carry-bank and --holdout-split need a method with a knowledge "
                             f"bank among --methods (--bank-method {args.bank_method})")
        bags = collect(args.sources)
        if args.carry_bank and not any(s.endswith(".csv") for s in args.sources):
            raise ValueError("--carry-bank needs robots and missions: give a manifest CSV "
                             "(bag,robot,mission[,split])")
        self.missions, self.held_out = split_holdout(bags, args.holdout_split)
        self.pack_path = str(resolve_pack(args.pack).resolve())
        self.pack = ModelPack.load(self.pack_path)
        self.out = Path(args.out).resolve()
        self.store = ResultStore(self.out, reuse=not args.rerun)
        self.options = self._replay_options()
        self.config = {"replay_options": self.options, "bank_method": self.bank_method}
        self.executor: LocalPool | RayExecutor | None = None
        self.bags: dict[Path, dict] = {}
        self.cost: dict = {}
        self.order: dict[tuple[str, str], int] = {}

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> int:
        start = time.perf_counter()
        every = self.missions + self.held_out
        print(f"fleet: {len(every)} bags of {len({b.robot for b in every})} robots "
              f"({len(self.held_out)} held out); indexing ...", file=sys.stderr, flush=True)
        self._index(every)
        self.executor = self._executor()
        self.cost = self._measure_cost()
        self._size(every)
        phases = []
        records = self._phase("missions", chains(self.missions, self.args.carry_bank), phases)
        merge = self._merge(records)
        if self.held_out and merge.get("path"):
            pair = chains(self.held_out, False, HOLDOUT_FLEET, merge["path"]) + \
                chains(self.held_out, False, HOLDOUT_EMPTY)
            records += self._phase("hold-out", pair, phases)
        elif self.held_out:
            print("fleet: no fleet bank, so no hold-out pass", file=sys.stderr)
        records.sort(key=lambda r: r["index"])
        fleet = self._document(records, merge, phases, time.perf_counter() - start)
        atomic_write_bytes(self.out / "fleet.json", json.dumps(fleet, indent=1).encode())
        written = write_fleet_report(fleet, self.out)
        self.store.digests.save()
        print_summary(fleet)
        print(f"wrote {self.out / 'fleet.json'}, " + ", ".join(str(p) for p in written))
        failed = [r for r in records if r["status"] == "failed"]
        return 1 if failed else 0

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
            self.executor = None

    def _phase(self, title: str, task_chains: list, phases: list) -> list[dict]:
        tasks = [t for c in task_chains for t in c]
        for task in tasks:
            self.order.setdefault((str(task.bag.path), task.phase), len(self.order))
        frames = sum(self.bags[t.bag.path]["frames"] or 0 for t in tasks)
        bars = sys.stderr.isatty() or bool(os.environ.get("ZOA_PROGRESS"))
        progress = Progress(title, len(tasks), frames, bars)
        start = time.perf_counter()
        records = run_phase(ChainSchedule(task_chains), self.executor, self.store, self._prepare,
                            progress)
        wall = time.perf_counter() - start
        ran = [r for r in records if r["status"] == "ok"]
        busy = sum(r["seconds"] or 0.0 for r in ran)
        frames_run = sum(self.store.result(r["key"])["run"]["frames"] for r in ran)
        cpus = self.executor.slots * self.args.task_cpus
        phases.append({
            "phase": title, "bags": len(tasks), "replayed": len(ran),
            "cached": sum(r["status"] == "cached" for r in records),
            "failed": sum(r["status"] == "failed" for r in records), "wall_s": wall,
            "frames_replayed": frames_run, "busy_s": busy, "cpus": cpus,
            "frames_per_s_per_cpu": frames_run / wall / cpus if ran and wall > 0 else None,
            "utilisation": busy / (wall * self.executor.slots) if ran and wall > 0 else None})
        return records

    def _prepare(self, ready: Ready) -> tuple[dict, BagJob]:
        """The record and job of a task that may start."""
        task, bag = ready.task, ready.task.bag
        info = self.bags[bag.path]
        bank_digest = self.store.digests.file(ready.bank) if ready.bank else None
        key = task_key(info["digest"], self.pack.fingerprint, self.config, bank_digest)
        job = BagJob(
            key=key, bag=str(bag.path), options=tuple(self.options), pack_name=self.pack_path,
            json_name=str(self.store.json_path(key)), bank_method=self.bank_method,
            bank_out_name=str(self.store.bank_path(key)),
            bank_in=Path(ready.bank).read_bytes() if ready.bank else None,
            bank_in_name=ready.bank or "",
            provenance=(("robot", bag.robot), ("mission", bag.mission),
                        ("writer", "zoa-ros fleet")),
            threads=self.args.task_cpus, memory_mb=info["memory_mb"])
        argv = replay_argv(job, job.json_name, ready.bank,
                           job.bank_out_name if self.bank_method else None)
        record = {"index": self.order[(str(bag.path), task.phase)], "name": task.name,
                  "bag": str(bag.path), "robot": bag.robot, "mission": bag.mission,
                  "split": bag.split, "phase": task.phase, "key": key, "status": "pending",
                  "attempts": 0, "errors": [], "bank_in": ready.bank,
                  "bank_from": ready.bank_from.name if ready.bank_from else None,
                  "bank_out": None, "seconds": None, "host": None,
                  "replay": shlex.join(["zoa-ros", *argv])}
        return record, job

    # ---- before the first replay ------------------------------------------------------------
    def _replay_options(self) -> list[str]:
        a = self.args
        options = ["--methods", ",".join(self.methods), "--mode", a.mode,
                   "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--device", a.device]
        if a.limit is not None:
            options += ["--limit", str(a.limit)]
        if a.image_topic:
            options += ["--image-topic", a.image_topic]
        if a.label_topic:
            options += ["--label-topic", a.label_topic]
        if a.no_labels:
            options.append("--no-labels")
        if a.method_config:
            options += ["--method-config", *a.method_config]
        return options

    def _index(self, bags: list[FleetBag]) -> None:
        """Content digest and frame count of every bag (the count only sizes the progress bar
        and the memory a job reserves; the replay reads the bag itself)."""
        for bag in bags:
            try:
                digest = self.store.digests.bag(bag.path)
            except OSError as e:
                raise ValueError(f"{bag.path}: cannot read the bag ({e})") from e
            self.bags[bag.path] = {"digest": digest,
                                   "frames": _frame_count(bag.path, self.args.image_topic,
                                                          self.args.limit),
                                   "memory_mb": 0}
        self.store.digests.save()

    def _executor(self) -> LocalPool | RayExecutor:
        a = self.args
        if a.ray:
            local = a.workers * a.task_cpus if a.workers else None
            return RayExecutor(a.ray, self.pack.fingerprint, Path(self.pack_path).read_bytes(),
                               a.task_cpus, local)
        return LocalPool(self.pack.fingerprint, self.pack_path, a.workers or 1)

    def _measure_cost(self) -> dict:
        """The probe's measurement of one replay (stored in OUT/cost.json and reused while
        pack and options are the same); none with --task-memory-mb."""
        if self.args.task_memory_mb:
            return {}
        options = {"methods": self.methods, "mode": self.args.mode,
                   "batch_size": self.args.batch_size, "method_configs": self.method_configs,
                   "threads": self.args.task_cpus}
        key = canonical({"pack": self.pack.fingerprint, "executor": self.executor.kind,
                         **options})
        path = self.out / "cost.json"
        known = _read_json(path)
        if key not in known:
            print("fleet: measuring the cost of one replay in a fresh worker ...",
                  file=sys.stderr, flush=True)
            known[key] = self.executor.probe(**options)
            atomic_write_bytes(path, json.dumps(known, indent=1).encode())
        return known[key]

    def _size(self, bags: list[FleetBag]) -> None:
        """Memory per job (the probe's peak times a margin, plus the job's decoded frames) and,
        for the local pool, how many workers CPUs and memory allow."""
        a = self.args
        for bag in bags:
            info = self.bags[bag.path]
            if a.task_memory_mb:
                info["memory_mb"] = a.task_memory_mb
                continue
            frames_mb = (info["frames"] or 0) * self.cost["frame_bytes"] / MIB
            need = self.cost["peak_rss_mb"] * MEMORY_MARGIN + frames_mb
            info["memory_mb"] = int(math.ceil(need / MEMORY_STEP_MB) * MEMORY_STEP_MB)
        if isinstance(self.executor, LocalPool) and not a.workers:
            most = max(i["memory_mb"] for i in self.bags.values())
            by_cpu = max(1, _cpus() // a.task_cpus)
            by_memory = max(1, _available_mb() // most) if most else by_cpu
            self.executor.workers = max(1, min(by_cpu, by_memory, len(bags)))
            if by_memory < by_cpu:
                print(f"fleet: {self.executor.workers} workers: memory for {by_memory} jobs of "
                      f"{most} MB", file=sys.stderr)

    # ---- after the missions ---------------------------------------------------------------
    def _merge(self, records: list[dict]) -> dict:
        """``bank merge`` of every robot's final bank (its last mission that ended with one)."""
        if self.bank_method is None:
            return {}
        last: dict[str, dict] = {}
        for r in records:
            if r["status"] in DONE and r.get("bank_out"):
                best = last.get(r["robot"])
                if best is None or mission_order(r["mission"]) > mission_order(best["mission"]):
                    last[r["robot"]] = r
        banks = [{"robot": robot, "mission": r["mission"], "bank": r["bank_out"]}
                 for robot, r in sorted(last.items())]
        out = self.out / "fleet.zoabank"
        merge = {"robots": banks, "path": None, "capacity": self.args.merge_capacity}
        if not banks:
            return merge
        # the same inputs merged before: keep that file, so the hold-out replays' keys (which
        # hash the bank they load) stay the same and a rerun finds their results
        inputs = {"banks": [self.store.digests.file(b["bank"]) for b in banks],
                  "capacity": self.args.merge_capacity}
        record = self.out / "fleet.zoabank.json"
        before = _read_json(record)
        if before.get("inputs") == inputs and out.is_file() and \
                before.get("sha256") == self.store.digests.file(out):
            merge.update(before["merge"])
            return merge
        try:
            merged = merge_files([b["bank"] for b in banks], out, self.args.merge_capacity,
                                 {"robot": "fleet", "mission": "merged"}, force=True)
        except BankError as e:
            merge["error"] = str(e)
            print(f"fleet: bank merge failed: {e}", file=sys.stderr)
            return merge
        merge.update(path=str(out), entries=len(merged.picked), pruned=len(merged.removed),
                     inputs_entries=len(merged.picked) + len(merged.removed))
        atomic_write_bytes(record, json.dumps({"inputs": inputs, "merge": merge,
                                               "sha256": self.store.digests.file(out)}).encode())
        return merge

    def _document(self, records: list[dict], merge: dict, phases: list, wall: float) -> dict:
        a = self.args
        results = {r["key"]: self.store.result(r["key"]) for r in records
                   if r["status"] in DONE}
        return {
            "config": {"sources": a.sources, "out": str(self.out), "pack": self.pack_path,
                       "pack_fingerprint": self.pack.fingerprint, "methods": self.methods,
                       "mode": a.mode, "batch_size": a.batch_size, "seed": a.seed,
                       "limit": a.limit, "replay_options": self.options,
                       "bank_method": self.bank_method, "carry_bank": a.carry_bank,
                       "holdout_split": a.holdout_split, "merge_capacity": a.merge_capacity},
            "run": {**self.executor.describe(), "slots": self.executor.slots,
                    "task_cpus": a.task_cpus,
                    "task_memory_mb": sorted({i["memory_mb"] for i in self.bags.values()}),
                    "cost_probe": self.cost, "phases": phases, "wall_s": wall,
                    "digest_bytes_read": self.store.digests.read_bytes},
            "records": records,
            "summary": summarize(records, results, self.bank_method),
            "merge": merge,
        }


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("batch_size", "limit", "workers", "task_cpus", "task_memory_mb",
                 "merge_capacity"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")


def _frame_count(path: Path, image_topic: str | None, limit: int | None) -> int | None:
    """Messages on the bag's image topic (at most ``limit``); ``None`` if the bag cannot say
    (the replay will then report why)."""
    try:
        with open_bag(path) as reader:
            topic = pick_topic(reader, image_topic, IMAGE_TYPES, "image")
            count = sum(c.msgcount for c in reader.connections if c.topic == topic)
    except (ValueError, FileNotFoundError):
        return None
    return count if limit is None else min(count, limit)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _available_mb() -> int:
    """MemAvailable (Linux), else free physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MIB
