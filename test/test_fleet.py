"""``zoa-ros fleet``: sources, chains, keys and aggregation (pure parts), then whole fleet runs
on real bags with a real pack: the local process pool, interrupted and resumed, failing bags
retried and reported, per-bag numbers equal to ``zoa-ros replay``'s, and the same numbers from a
real multi-node Ray cluster on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import without_timing

from zoa_ros.core.bank.file import inspect_bank
from zoa_ros.core.eval.fleet.aggregate import summarize
from zoa_ros.core.eval.fleet.keys import DigestCache, task_key
from zoa_ros.core.eval.fleet.manifest import FleetBag, collect, mission_order
from zoa_ros.core.eval.fleet.plan import (
    HOLDOUT_EMPTY,
    HOLDOUT_FLEET,
    MISSIONS,
    ChainSchedule,
    Task,
    chains,
    split_holdout,
)
from zoa_ros.tools.cli import main


def zoa(*argv: object) -> int:
    return main([str(a) for a in argv])


# ---- sources -----------------------------------------------------------------------------------

def fake_bag(path: Path) -> Path:
    """A folder that looks like a rosbag2 recording to the source finder (it is never opened)."""
    path.mkdir(parents=True)
    (path / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    (path / f"{path.name}.mcap").write_bytes(b"x")
    return path


def test_sources_paths_folders_globs_and_manifests(tmp_path, monkeypatch) -> None:
    for name in ("a1", "a2", "b10", "b2"):
        fake_bag(tmp_path / "drives" / name)
    (tmp_path / "loose.mcap").write_bytes(b"x")
    manifest = tmp_path / "fleet.csv"
    manifest.write_text("bag,robot,mission,split\ndrives/b10,b,10,test\ndrives/b2,b,2,\n"
                        f"{tmp_path / 'drives/a1'},a,1,train\n")
    bags = collect([str(manifest)])
    assert [(b.robot, b.mission, b.split) for b in bags] == \
        [("b", "10", "test"), ("b", "2", ""), ("a", "1", "train")]
    assert bags[0].path == (tmp_path / "drives/b10").resolve() and bags[0].name == "b/10"
    # a folder of bags: each its own robot named by its path, mission 1
    folder = collect([str(tmp_path / "drives")])
    assert [b.robot for b in folder] == ["a1", "a2", "b10", "b2"]
    assert {b.mission for b in folder} == {"1"}
    monkeypatch.chdir(tmp_path)
    assert [b.robot for b in collect(["drives/a*", "loose.mcap"])] == \
        ["drives/a1", "drives/a2", "loose.mcap"]
    assert [b.robot for b in collect([str(tmp_path / "drives/b2")])] == ["b2"]
    assert sorted(["10", "2", "m10", "m9", "1"], key=mission_order) == \
        ["1", "2", "10", "m9", "m10"]


@pytest.mark.parametrize("content, error", [
    ("bag,robot\nx,a\n", "header row bag,robot,mission"),
    ("bag,robot,mission\n", "lists no bags"),
    ("bag,robot,mission\ndrives/a1,,1\n", r"fleet.csv:2: empty robot"),
    ("bag,robot,mission\nnowhere,a,1\n", "is not a rosbag2 recording"),
    ("bag,robot,mission\ndrives/a1,a,1\ndrives/a2,a,1\n", "two bags for mission '1'"),
    ("bag,robot,mission\ndrives/a1,a,1\ndrives/a1,b,1\n", "listed twice"),
])
def test_manifest_errors_name_the_problem(tmp_path, content, error) -> None:
    fake_bag(tmp_path / "drives" / "a1")
    fake_bag(tmp_path / "drives" / "a2")
    manifest = tmp_path / "fleet.csv"
    manifest.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        collect([str(manifest)])


def test_sources_that_match_nothing(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    for source, error in ((tmp_path / "missing", "no such bag"),
                          (tmp_path / "empty", "no rosbag2 recording in it"),
                          (tmp_path / "x*", "matches no rosbag2 recording")):
        with pytest.raises(FileNotFoundError, match=error):
            collect([str(source)])
    with pytest.raises(ValueError, match="no bags given"):
        collect([])


# ---- chains ------------------------------------------------------------------------------------

def bag(robot: str, mission: str, split: str = "") -> FleetBag:
    return FleetBag(Path(f"/bags/{robot}{mission}"), robot, mission, split)


def test_chains_carry_banks_in_mission_order_and_past_a_failure() -> None:
    bags = [bag("a", "10"), bag("b", "1"), bag("a", "2"), bag("a", "9")]
    plan = chains(bags, carry_bank=True)
    assert [[t.bag.mission for t in c] for c in plan] == [["2", "9", "10"], ["1"]]
    schedule = ChainSchedule(plan)
    first = schedule.ready()
    assert [(r.task.bag.name, r.bank, r.bank_from) for r in first] == \
        [("a/2", None, None), ("b/1", None, None)]
    assert schedule.ready() == []           # each chain's next mission waits for this one
    schedule.finished(first[0].task, "a2.zoabank")
    (second,) = schedule.ready()
    assert (second.task.bag.name, second.bank, second.bank_from.bag.name) == \
        ("a/9", "a2.zoabank", "a/2")
    schedule.finished(second.task, None)    # a/9 failed: a/10 starts from a/2's bank
    (third,) = schedule.ready()
    assert (third.task.bag.name, third.bank, third.bank_from.bag.name) == \
        ("a/10", "a2.zoabank", "a/2")
    schedule.finished(third.task, "a10.zoabank")
    assert not schedule.done
    schedule.finished(first[1].task, None)
    assert schedule.done and schedule.ready() == []
    # without carrying, every bag starts at once from its phase's bank
    independent = ChainSchedule(chains(bags, False, HOLDOUT_FLEET, "fleet.zoabank"))
    ready = independent.ready()
    assert len(ready) == 4 and {r.bank for r in ready} == {"fleet.zoabank"}
    assert {r.task.phase for r in ready} == {HOLDOUT_FLEET}
    assert Task(bags[0]).name == "a/10" and Task(bags[0], HOLDOUT_EMPTY).name.endswith(
        f"[{HOLDOUT_EMPTY}]")


def test_holdout_split() -> None:
    bags = [bag("a", "1", "train"), bag("a", "2", "test"), bag("b", "1")]
    missions, held = split_holdout(bags, "test")
    assert [b.name for b in missions] == ["a/1", "b/1"] and [b.name for b in held] == ["a/2"]
    assert split_holdout(bags, None) == (bags, [])
    with pytest.raises(ValueError, match=r"no bag has split 'val'.*test, train"):
        split_holdout(bags, "val")
    with pytest.raises(ValueError, match="nothing is left"):
        split_holdout([bags[1]], "test")


# ---- keys --------------------------------------------------------------------------------------

def test_keys_follow_content_and_the_cache_reads_each_file_once(tmp_path) -> None:
    folder = fake_bag(tmp_path / "bag")
    cache = DigestCache(tmp_path / "digests.json")
    first = cache.bag(folder)
    assert cache.read_bytes > 0
    cache.save()
    again = DigestCache(tmp_path / "digests.json")
    assert again.bag(folder) == first and again.read_bytes == 0
    (folder / "bag.mcap").write_bytes(b"y")      # same size, new content and mtime
    os.utime(folder / "bag.mcap", ns=(1, 1))
    changed = again.bag(folder)
    assert changed != first and again.read_bytes == 1
    key = task_key(first, "pack", {"seed": 0}, None)
    assert key == task_key(first, "pack", {"seed": 0}, None)
    assert len({key, task_key(changed, "pack", {"seed": 0}, None),
                task_key(first, "other", {"seed": 0}, None),
                task_key(first, "pack", {"seed": 1}, None),
                task_key(first, "pack", {"seed": 0}, "bank")}) == 5


# ---- aggregation -------------------------------------------------------------------------------

def replay_result(domains: dict[str, list[tuple[str, int, int | None, float | None]]]) -> dict:
    """A replay result with the fields aggregation reads: per method, domain rows of (name,
    frames, correct or None, agreement)."""
    methods = {}
    for method, rows in domains.items():
        methods[method] = {
            "domains": [{"name": n, "round": 1, "frames": f, "correct": c, "agreement": a}
                        for n, f, c, a in rows],
            "costs": {"ms_per_frame": 2.0 if method == "none" else 5.0, "timed_frames": 10,
                      "forward_per_frame": 1.0, "adapt_steps": 1},
            "domain_changes": 0, "bank": {"entries": 0}}
    frames = sum(f for _, f, _, _ in next(iter(domains.values())))
    labelled = all(c is not None for rows in domains.values() for _, _, c, _ in rows)
    return {"methods": methods, "labelled": labelled,
            "run": {"frames": frames, "peak_rss_mb": 1.0}}


def record(key: str, robot: str, mission: str, phase: str = MISSIONS,
           status: str = "ok") -> dict:
    return {"key": key, "bag": f"/bags/{robot}{mission}", "robot": robot, "mission": mission,
            "split": "", "phase": phase, "status": status, "attempts": 1, "errors": [],
            "seconds": 1.0}


def test_harm_and_transfer_are_counted_over_frames() -> None:
    results = {
        "k1": replay_result({"none": [("clean", 10, 9, 100.0), ("fog", 30, 6, 100.0)],
                             "zoa": [("clean", 10, 8, 90.0), ("fog", 30, 15, 50.0)]}),
        "k2": replay_result({"none": [("fog", 10, 5, 100.0)],
                             "zoa": [("fog", 10, 4, 80.0)]}),
        "k3": replay_result({"none": [("bag", 20, None, 100.0)],
                             "zoa": [("bag", 20, None, 75.0)]}),
        "h1": replay_result({"none": [("fog", 20, 10, 100.0)], "zoa": [("fog", 20, 12, 70.0)]}),
        "h2": replay_result({"none": [("fog", 20, 10, 100.0)], "zoa": [("fog", 20, 8, 60.0)]}),
    }
    records = [record("k1", "a", "1"), record("k2", "a", "2"), record("k3", "b", "1"),
               record("kx", "b", "2", status="failed"),
               record("h1", "c", "1", HOLDOUT_FLEET), record("h2", "c", "1", HOLDOUT_EMPTY)]
    s = summarize(records, results, "zoa")
    # fleet-wide: labelled frames only for accuracy, every frame for agreement
    assert s["fleet"]["zoa"]["frames"] == 70 and s["fleet"]["zoa"]["labelled_frames"] == 50
    assert s["fleet"]["zoa"]["acc"] == pytest.approx(100 * 27 / 50)
    assert s["fleet"]["none"]["acc"] == pytest.approx(100 * 20 / 50)
    assert s["fleet"]["zoa"]["agreement"] == pytest.approx((9 + 15 + 8 + 15) / 70 * 100)
    assert s["robots"]["a"]["zoa"]["acc"] == pytest.approx(100 * 27 / 50)
    assert s["robots"]["b"]["zoa"]["acc"] is None
    assert s["robots"]["b"]["zoa"]["agreement"] == pytest.approx(75.0)
    by_domain = {tuple(g["group"]): g for g in s["harm"]["by_domain"]}
    assert by_domain[("zoa", "clean")]["delta"] == pytest.approx(-10.0)
    assert by_domain[("zoa", "fog")]["delta"] == pytest.approx(100 * (19 - 11) / 40)
    assert by_domain[("zoa", "fog")]["harmed_rows"] == 1
    assert [(w["mission"], w["domain"], w["delta"]) for w in s["harm"]["worst"]] == \
        [("1", "clean", pytest.approx(-10.0)), ("2", "fog", pytest.approx(-10.0))]
    bags = {b["key"]: b for b in s["bags"]}
    assert "methods" not in bags["kx"] and bags["kx"]["status"] == "failed"
    assert s["costs"]["methods"]["zoa"]["ms_per_frame"] == pytest.approx(5.0)
    assert s["costs"]["task_ms_per_frame"] == pytest.approx(1e3 * 3 / 70)
    transfer = s["transfer"]
    assert transfer["all"] == {"metric": "acc", "frames": 20, "fleet_bank": 60.0,
                               "empty_bank": 40.0, "delta": pytest.approx(20.0)}
    assert summarize(records[:4], results, "zoa")["transfer"] is None


# ---- whole runs on real bags -------------------------------------------------------------------

COMMON = ["--methods", "zoa", "--batch-size", "8", "--seed", "0",
          "--image-topic", "/camera/image_raw"]


@pytest.fixture(scope="module")
def fleet_bags(photo_dir, predicted_csv, saved_vit_pack, tmp_path_factory) -> dict:
    """A fleet of tiny bags (16 frames of the bundled photos each) and its manifest: robot a's
    missions 1-3 (2 is corrupt), robot b's 1 and 2 (2 records its camera on another topic), an
    unlabelled robot d, and robot c's held-out mission."""
    _, pack = saved_vit_pack
    root = tmp_path_factory.mktemp("fleet")

    def make(name: str, schedule: str, seed: int, *extra: object) -> Path:
        out = root / name
        labels = ["--no-labels"] if "--no-labels" in extra else ["--labels", predicted_csv]
        rest = [e for e in extra if e != "--no-labels"]
        assert zoa("make-bag", "--data", photo_dir, *labels, "--schedule", schedule,
                   "--seed", seed, "--crop-for", pack, "--out", out, *rest) == 0
        return out

    make("a1", "clean:8,gaussian_noise:8", 1)
    make("a3", "gaussian_noise:8,clean:8", 3)
    make("b1", "clean:8,contrast:8", 2)
    make("b2", "clean:8,contrast:8", 5, "--topic", "/cam/front")
    make("c1", "gaussian_noise:8,contrast:8", 4)
    make("d1", "clean:8,contrast:8", 6, "--no-labels")
    (root / "a2").mkdir()   # a copy of a1 cut in half
    (root / "a2" / "metadata.yaml").write_bytes((root / "a1" / "metadata.yaml").read_bytes())
    data = (root / "a1" / "a1.mcap").read_bytes()
    (root / "a2" / "a1.mcap").write_bytes(data[:len(data) // 2])
    manifest = root / "fleet.csv"
    manifest.write_text("bag,robot,mission,split\n"
                        "a3,a,3,train\na1,a,1,train\na2,a,2,train\nb1,b,1,train\n"
                        "b2,b,2,train\nc1,c,1,test\nd1,d,1,train\n")
    return {"root": root, "manifest": manifest, "pack": pack}


def fleet_argv(bags: dict, out: Path, *extra: object) -> list:
    return ["fleet", bags["manifest"], "--pack", bags["pack"], *COMMON, "--carry-bank",
            "--holdout-split", "test", "--workers", "2", "--out", out, *extra]


def load(out: Path) -> dict:
    return json.loads((out / "fleet.json").read_text())


def by_name(fleet: dict) -> dict[str, dict]:
    return {r["name"]: r for r in fleet["records"]}


@pytest.fixture(scope="module")
def pool_run(fleet_bags, tmp_path_factory) -> dict:
    """The fleet on the local process pool, interrupted (SIGINT, as Ctrl-C sends to the whole
    process group) once its first result is stored, then run again to the end."""
    out = tmp_path_factory.mktemp("pool") / "out"
    # Ctrl-C in a terminal: SIGINT raises KeyboardInterrupt, also where this test runs in a
    # background job (which starts with SIGINT ignored, inherited by its children)
    launch = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from zoa_ros.tools.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", launch, *map(str, fleet_argv(fleet_bags, out))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "results").glob("*.task.json")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no result stored in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    interrupted_output = proc.communicate(timeout=120)[0]
    interrupted = {"code": proc.returncode, "output": interrupted_output,
                   "stored": sorted(p.name for p in (out / "results").glob("*.task.json")),
                   "report": (out / "fleet.json").exists()}
    start = time.monotonic()
    code = zoa(*fleet_argv(fleet_bags, out))
    return {"out": out, "code": code, "fleet": load(out), "interrupted": interrupted,
            "seconds": time.monotonic() - start}


def test_an_interrupted_fleet_run_resumes(pool_run) -> None:
    interrupted, fleet = pool_run["interrupted"], pool_run["fleet"]
    assert interrupted["code"] == 130 and not interrupted["report"], interrupted["output"]
    assert interrupted["stored"]
    records = by_name(fleet)
    cached = [r for r in records.values() if r["status"] == "cached"]
    assert {f"{r['key']}.task.json" for r in cached} == set(interrupted["stored"])
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert ok and all(r["pid"] != os.getpid() for r in ok)   # ran in worker processes
    phases = fleet["run"]["phases"]
    assert sum(p["cached"] for p in phases) == len(cached)
    assert sum(p["replayed"] for p in phases) == len(ok)


def test_failing_bags_are_retried_and_lose_no_other_result(pool_run) -> None:
    assert pool_run["code"] == 1
    records = by_name(pool_run["fleet"])
    assert {n for n, r in records.items() if r["status"] == "failed"} == {"a/2", "b/2"}
    corrupt, wrong_topic = records["a/2"], records["b/2"]
    assert corrupt["attempts"] == wrong_topic["attempts"] == 2
    assert len(corrupt["errors"]) == 2 and "truncated or corrupt" in corrupt["errors"][0]
    assert "no topic '/camera/image_raw'" in wrong_topic["errors"][0]
    assert "/cam/front" in wrong_topic["errors"][0]
    # a/3 runs after the failed a/2, from the bank a/1 ended with
    assert records["a/3"]["bank_from"] == "a/1"
    assert records["a/3"]["bank_in"] == records["a/1"]["bank_out"]
    assert records["a/1"]["bank_in"] is None and records["b/1"]["bank_in"] is None
    good = [r for r in records.values() if r["status"] != "failed"]
    assert len(good) == 6 and all(Path(r["bank_out"]).is_file() for r in good)
    report = (pool_run["out"] / "report.md").read_text()
    assert "## Failed bags" in report and "truncated or corrupt" in report


def test_each_bag_gets_the_numbers_zoa_ros_replay_gives(pool_run, fleet_bags, tmp_path) -> None:
    records = by_name(pool_run["fleet"])
    for name, bank in (("b/1", None), ("a/3", records["a/1"]["bank_out"])):
        r = records[name]
        argv = ["replay", r["bag"], "--pack", fleet_bags["pack"], "--methods", "none,zoa",
                *COMMON[2:], "--json", tmp_path / "replay.json"]
        assert zoa(*argv, *(["--load-bank", bank] if bank else [])) == 0
        direct = json.loads((tmp_path / "replay.json").read_text())
        stored = json.loads((pool_run["out"] / "results" / f"{r['key']}.json").read_text())
        assert without_timing(stored["methods"]) == without_timing(direct["methods"])
        assert stored["stream"] == direct["stream"] and stored["labelled"]
        assert stored["config"]["json"] == str(pool_run["out"] / "results" / f"{r['key']}.json")
    # the bag's bank names its robot and mission and where the driver stored it
    meta = inspect_bank(records["a/1"]["bank_out"])
    assert meta["provenance"]["robot"] == "a" and meta["provenance"]["mission"] == "1"
    assert meta["provenance"]["writer"] == "zoa-ros fleet"
    assert all(o["source"] == records["a/1"]["bank_out"] for o in meta["entry_provenance"])


def test_the_fleet_report(pool_run) -> None:
    fleet, out = pool_run["fleet"], pool_run["out"]
    summary = fleet["summary"]
    records = by_name(fleet)
    missions = [r for r in records.values() if r["phase"] == MISSIONS and r["status"] != "failed"]
    assert summary["fleet"]["zoa"]["frames"] == 16 * len(missions) == 64
    assert summary["fleet"]["zoa"]["labelled_frames"] == 48       # d/1 has no labels
    assert summary["fleet"]["none"]["acc"] is not None
    assert summary["robots"]["d"]["zoa"]["acc"] is None
    assert summary["robots"]["d"]["none"]["agreement"] == 100.0
    domains = {g["group"][1] for g in summary["harm"]["by_domain"]}
    assert domains == {"clean", "gaussian_noise", "contrast"}
    merge = fleet["merge"]
    assert [b["robot"] for b in merge["robots"]] == ["a", "b", "d"]
    assert merge["robots"][0]["bank"] == records["a/3"]["bank_out"]
    assert Path(merge["path"]) == out / "fleet.zoabank" and (out / "fleet.zoabank").is_file()
    held = records[f"c/1 [{HOLDOUT_FLEET}]"]
    assert held["bank_in"] == merge["path"]
    assert records[f"c/1 [{HOLDOUT_EMPTY}]"]["bank_in"] is None
    transfer = summary["transfer"]
    assert transfer["method"] == "zoa" and transfer["all"]["frames"] == 16
    assert transfer["all"]["delta"] == pytest.approx(
        transfer["all"]["fleet_bank"] - transfer["all"]["empty_bank"])
    assert fleet["run"]["executor"] == "process-pool" and fleet["run"]["workers"] == 2
    assert fleet["run"]["cost_probe"]["peak_rss_mb"] > fleet["run"]["cost_probe"][
        "baseline_rss_mb"] > 0
    report = (out / "report.md").read_text()
    for heading in ("## Fleet-wide", "## Per robot", "## Harm against no adaptation",
                    "### Worst cases", "## Per bag", "## Knowledge banks",
                    "### Does fleet knowledge transfer?", "## Costs per frame"):
        assert heading in report
    for png in ("accuracy_by_bag.png", "harm_by_domain.png", "transfer.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_replays_only_what_failed(pool_run, fleet_bags, capsys) -> None:
    out = pool_run["out"]
    assert zoa(*fleet_argv(fleet_bags, out)) == 1
    again = load(out)
    statuses = {n: r["status"] for n, r in by_name(again).items()}
    assert statuses.pop("a/2") == statuses.pop("b/2") == "failed"
    assert set(statuses.values()) == {"cached"}
    assert again["summary"]["fleet"] == pool_run["fleet"]["summary"]["fleet"]
    assert "failed: a/2" in capsys.readouterr().out


def test_ray_cluster_of_several_nodes_gives_the_pool_numbers(pool_run, fleet_bags,
                                                             tmp_path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "ray"
    try:
        argv = fleet_argv(fleet_bags, out, "--ray", cluster.address)
        argv.remove("--workers")
        argv.remove("2")
        code = zoa(*argv)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert code == 1
    on_ray, on_pool = by_name(load(out)), by_name(pool_run["fleet"])
    assert on_ray.keys() == on_pool.keys()
    for name, r in on_ray.items():
        assert r["status"] == ("failed" if name in ("a/2", "b/2") else "ok")
        if r["status"] == "failed":
            assert r["errors"][0].split(" (")[0] == on_pool[name]["errors"][0].split(" (")[0]
            continue
        ray_result, pool_result = (
            json.loads((folder / "results" / f"{x['key']}.json").read_text())
            for x, folder in ((r, out), (on_pool[name], pool_run["out"])))
        assert without_timing(ray_result["methods"]) == without_timing(pool_result["methods"])
    nodes = {r["node"] for r in on_ray.values() if r["status"] == "ok"}
    assert len(nodes) == 2 and "" not in nodes   # both single-CPU worker nodes ran replays
    run = load(out)["run"]
    assert run["executor"] == "ray" and run["nodes"] == 3 and run["cluster_cpus"] == 2


def test_bad_fleet_arguments(fleet_bags, tmp_path, capsys) -> None:
    pack, root = fleet_bags["pack"], fleet_bags["root"]

    def error(*argv: object) -> str:
        assert zoa("fleet", *argv, "--out", tmp_path / "o") == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "needs robots and missions" in error(root / "b1", "--pack", pack, "--carry-bank")
    assert "need a method with a knowledge bank" in error(
        fleet_bags["manifest"], "--pack", pack, "--methods", "norm", "--carry-bank")
    assert "no bag has split 'val'" in error(fleet_bags["manifest"], "--pack", pack,
                                             "--holdout-split", "val")
    assert "--workers must be >= 1" in error(root / "b1", "--pack", pack, "--workers", "0")
    assert "no such pack file" in error(root / "b1", "--pack", tmp_path / "none.zoapack")
    assert not (tmp_path / "o" / "fleet.json").exists()


def test_bench_fleet_runs_both_executors_on_the_same_bags(saved_vit_pack, tmp_path,
                                                           capsys) -> None:
    _, pack = saved_vit_pack
    argv = ["bench", "fleet", "--pack", pack, "--bags", "3", "--frames", "4", "--batch-size",
            "4", "--workers", "1", "--out", tmp_path]
    assert zoa(*argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["executor"], r["bags"], r["frames_replayed"]) for r in report["runs"]] == \
        [("pool", 3, 12), ("ray", 3, 12)]
    assert report["identical_bags"] == report["compared_bags"] == 3
    assert report["ray_over_pool"]["replays"] == pytest.approx(
        report["wall_s"]["ray"] / report["wall_s"]["pool"])
    assert "Ray / pool wall time, replays:" in printed and "frames/s per CPU" in printed
    assert zoa(*argv, "--summarize") == 0
    assert "per-bag results identical: 3 of 3 bags" in capsys.readouterr().out
