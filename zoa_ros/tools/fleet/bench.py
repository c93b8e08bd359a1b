"""``zoa-ros bench fleet``: the same fleet of short recordings replayed by ``zoa-ros fleet`` on
the local process pool and on a local Ray instance with as many CPUs, in one run: the
scheduler's overhead against the pool and the throughput in frames per second per CPU.

The bags (``--bags`` of ``--frames`` frames, made with ``zoa-ros make-bag`` from the photos
bundled with scikit-image, or ``--data``; one domain per bag, cycling through clean and four
corruptions) are made once into OUT/bags and reused. Then, ``--repeat`` times, pool and Ray
alternate, each into a fresh results folder (nothing reused from an earlier run) with
``--workers`` single-CPU replays at a time. Two wall times per run:

* end to end: the whole ``zoa-ros fleet`` command (hashing the bags, measuring the cost of a
  replay in a fresh worker, starting the workers and their imports, every replay, the report)
  less the time ``ray.init`` took to start the local Ray instance, which is reported apart (a
  real cluster is already running);
* replays: the fleet phase from its first submitted replay to its last result (``run.phases``
  of fleet.json). The pool's workers come from a forkserver that imported torch during the cost
  measurement; Ray's workers import it at their first replay, inside this time.

Overhead = (Ray's wall time - the pool's) / Ray's wall time, on the medians over the repeats.
Wall times of runs minutes apart also move with the machine (on shared cores by 10-25 %,
lab/fleet.md §10.3), so each run also reports how long its workers were idle: 1 - (the time spent
inside replays, summed) / (workers x the phase's wall time), measured within that run. Ray's idle
share minus the pool's is its scheduling overhead in percent of wall time, whatever the speed
of the machine during each run. The per-bag numbers of the two runs are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from zoa_ros.core.files.sample_photos import write_photos
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.tools.packs import add_pack_argument, resolve_pack

DOMAINS = ("clean", "gaussian_noise", "contrast", "brightness", "jpeg_compression")
EXECUTORS = ("pool", "ray")
NUMBERS = ("frames", "correct", "agreement", "entropy")   # per method and domain, compared


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="zoa-ros fleet on the process pool vs Ray: scheduler "
                       "overhead and frames/s per CPU", description=__doc__)
    add_pack_argument(p)
    p.add_argument("--bags", type=int, default=200, help="recordings (default %(default)s)")
    p.add_argument("--frames", type=int, default=16, help="frames per recording")
    p.add_argument("--methods", default="none",
                   help="methods replayed (default %(default)s; 'none' always runs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2,
                   help="replays at a time, one CPU each: pool processes and Ray CPUs")
    p.add_argument("--repeat", type=int, default=1,
                   help="pool and Ray runs, alternating (0: only make the bags)")
    p.add_argument("--data", help="labelled image folder for the bags (default: the photos "
                                  "bundled with scikit-image, unlabelled)")
    p.add_argument("--out", required=True, help="folder for the bags, results and bench.json")
    p.add_argument("--summarize", action="store_true",
                   help="run nothing: print the report of the runs stored in OUT again")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.pack = str(resolve_pack(args.pack))
    from zoa_ros.tools.cli import main

    if min(args.bags, args.frames, args.workers, args.batch_size) < 1 or args.repeat < 0:
        raise ValueError("--bags, --frames, --workers and --batch-size must be >= 1, "
                         "--repeat >= 0")
    out = Path(args.out)
    if args.summarize:
        stored = json.loads((out / "bench.json").read_text())
        for key in ("bags", "frames_per_bag", "methods", "workers", "repeat", "pack"):
            setattr(args, {"frames_per_bag": "frames"}.get(key, key), stored[key])
        runs = [run_record(r["executor"], r["repeat"], Path(r["folder"]), r["end_to_end_s"])
                for r in stored["runs"]]
        print_report(summarize(runs, args))
        return 0
    bags = make_bags(out / "bags", args, main)
    if not args.repeat:
        return 0
    runs = []
    for repeat in range(args.repeat):
        for executor in EXECUTORS:
            folder = out / f"{executor}{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            argv = ["fleet", str(bags), "--pack", args.pack, "--methods", args.methods,
                    "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                    "--out", str(folder), *(["--ray", "local"] if executor == "ray" else [])]
            print(f"bench fleet: {executor} run {repeat + 1} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
            if code != 0:
                raise RuntimeError(f"zoa-ros {' '.join(argv)} exited with {code}")
            init = json.loads((folder / "fleet.json").read_text())["run"].get("init_s") or 0.0
            runs.append(run_record(executor, repeat, folder,
                                   time.perf_counter() - start - init))
    report = summarize(runs, args)
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    return 0


def make_bags(folder: Path, args: argparse.Namespace, main) -> Path:
    """``--bags`` recordings made with ``zoa-ros make-bag`` (kept and reused)."""
    size = ModelPack.load(args.pack).data_config["input_size"]
    data = ["--data", args.data] if args.data else \
        ["--data", str(write_photos(folder.parent / "photos")[0].parent), "--no-labels"]
    made = 0
    for i in range(args.bags):
        bag = folder / f"bag{i:04d}"
        if (bag / "metadata.yaml").is_file():
            continue
        argv = ["make-bag", *data, "--schedule", f"{DOMAINS[i % len(DOMAINS)]}:{args.frames}",
                "--seed", str(i), "--resize", f"{size[2]}x{size[1]}", "--out", str(bag)]
        with contextlib.redirect_stdout(io.StringIO()):
            if main(argv) != 0:
                raise RuntimeError(f"zoa-ros {' '.join(argv)} failed")
        made += 1
    print(f"bench fleet: {args.bags} bags in {folder} ({made} made now)", file=sys.stderr)
    return folder


def run_record(executor: str, repeat: int, folder: Path, end_to_end_s: float) -> dict:
    """One run's numbers from its fleet.json: the phase's, the median time of one replay
    inside its worker, and the per-bag numbers to compare."""
    fleet = json.loads((folder / "fleet.json").read_text())
    seconds = [r["seconds"] for r in fleet["records"] if r["status"] == "ok"]
    return {"executor": executor, "repeat": repeat, "folder": str(folder),
            "end_to_end_s": end_to_end_s, "ray_init_s": fleet["run"].get("init_s") or 0.0,
            **fleet["run"]["phases"][0], "replay_median_s": statistics.median(seconds),
            "numbers": per_bag_numbers(fleet, folder)}


def per_bag_numbers(fleet: dict, folder: Path) -> dict[str, list]:
    """Per bag: each method's per-domain numbers that do not depend on timing."""
    out = {}
    for record in fleet["records"]:
        result = json.loads((folder / "results" / f"{record['key']}.json").read_text())
        out[record["bag"]] = [[name, [[d.get(k) for k in NUMBERS] for d in run["domains"]]]
                              for name, run in result["methods"].items()]
    return out


def summarize(runs: list[dict], args: argparse.Namespace) -> dict:
    by = {e: [r for r in runs if r["executor"] == e] for e in EXECUTORS}

    def median(key: str) -> dict[str, float]:
        return {e: statistics.median(r[key] for r in rs) for e, rs in by.items()}

    wall, end, fps = median("wall_s"), median("end_to_end_s"), median("frames_per_s_per_cpu")
    idle = {e: 1.0 - v for e, v in median("utilisation").items()}
    same = sum(by["pool"][0]["numbers"][bag] == by["ray"][0]["numbers"].get(bag)
               for bag in by["pool"][0]["numbers"])
    return {
        "bags": args.bags, "frames_per_bag": args.frames, "methods": args.methods,
        "workers": args.workers, "repeat": args.repeat, "pack": args.pack,
        "runs": [{k: v for k, v in r.items() if k != "numbers"} for r in runs],
        "wall_s": wall, "end_to_end_s": end, "frames_per_s_per_cpu": fps,
        "ray_over_pool": {"end_to_end": end["ray"] / end["pool"],
                          "replays": wall["ray"] / wall["pool"]},
        "overhead": {"end_to_end": (end["ray"] - end["pool"]) / end["ray"],
                     "replays": (wall["ray"] - wall["pool"]) / wall["ray"],
                     "idle": idle["ray"] - idle["pool"]},
        "idle": idle,
        "ray_init_s": statistics.median(r["ray_init_s"] for r in by["ray"]),
        "identical_bags": same, "compared_bags": len(by["pool"][0]["numbers"]),
    }


def print_report(report: dict) -> None:
    print(f"{'executor':9s} {'run':>3s} {'bags':>5s} {'frames':>7s} {'end to end s':>13s} "
          f"{'replays s':>10s} {'busy %':>7s} {'frames/s/CPU':>13s} {'1 replay s':>11s}")
    for r in report["runs"]:
        print(f"{r['executor']:9s} {r['repeat'] + 1:3d} {r['bags']:5d} {r['frames_replayed']:7d} "
              f"{r['end_to_end_s']:13.1f} {r['wall_s']:10.1f} {100 * r['utilisation']:7.1f} "
              f"{r['frames_per_s_per_cpu']:13.2f} {r['replay_median_s']:11.3f}")
    print("(1 replay s: the median time one replay took inside its worker; it moves with the "
          "machine's other load, not with the scheduler)")
    fps, ratio, overhead = (report[k] for k in ("frames_per_s_per_cpu", "ray_over_pool",
                                                "overhead"))
    print(f"{report['bags']} bags x {report['frames_per_bag']} frames, methods "
          f"{report['methods']}, {report['workers']} single-CPU replays at a time; medians of "
          f"{report['repeat']}:")
    for key, what in (("end_to_end", "end to end"), ("replays", "replays")):
        print(f"  Ray / pool wall time, {what}: {ratio[key]:.3f}  (scheduler overhead "
              f"{100 * overhead[key]:+.1f} % of Ray's wall time; target <= 5 %)")
    idle = report["idle"]
    print(f"  workers idle: pool {100 * idle['pool']:.1f} %, Ray {100 * idle['ray']:.1f} % of "
          f"their time; Ray's extra scheduling overhead {100 * overhead['idle']:+.1f} % of wall "
          f"time (target <= 5 %)")
    print(f"  frames/s per CPU: pool {fps['pool']:.2f}, Ray {fps['ray']:.2f} "
          f"(Ray / pool {fps['ray'] / fps['pool']:.3f})")
    print(f"  Ray start (ray.init, not in the wall times): {report['ray_init_s']:.1f} s")
    print(f"  per-bag results identical: {report['identical_bags']} of "
          f"{report['compared_bags']} bags")
