"""Per-bag replay results added up: per bag, per robot and fleet-wide, the harm table against no
adaptation, costs per frame, and the hold-out transfer number.

Every number is counted over frames, not averaged over bags or domains: a robot's accuracy is
its correct frames over its labelled frames, whatever the length of its bags. The inputs are
the fleet's task records (``record["key"]`` names the replay result, ``record["status"]`` is
``ok``, ``cached`` or ``failed``) and the replay results by key (what ``zoa-ros replay --json``
writes; :mod:`zoa_ros.core.eval.evaluation`).

* ``acc``: top-1 accuracy (%) over the labelled frames; ``None`` without labels.
* ``agreement``: percent of frames on which the method predicts what ``none`` (no adaptation)
  predicts on the same frame; a fleet replay always runs ``none``, so this exists for
  unlabelled recordings too.
* harm: per (bag, domain) the method's accuracy minus ``none``'s on the same frames, in points
  (negative: adaptation cost accuracy), added up per domain, per robot and per robot and
  domain; ``worst``: the most negative (bag, domain) rows.
* transfer (``--holdout-split``): on each held-out bag, the bank method's accuracy with the
  merged fleet bank minus its accuracy with an empty bank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from zoa_ros.core.eval.fleet.plan import HOLDOUT_EMPTY, HOLDOUT_FLEET, MISSIONS

REFERENCE = "none"
WORST = 10
DONE = ("ok", "cached")


@dataclass
class Tally:
    """Frames, labelled frames, correct frames and frames that agree with ``none``."""

    frames: int = 0
    labelled: int = 0
    correct: int = 0
    agree: float = 0.0
    agree_frames: int = 0

    def add(self, other: Tally) -> None:
        self.frames += other.frames
        self.labelled += other.labelled
        self.correct += other.correct
        self.agree += other.agree
        self.agree_frames += other.agree_frames

    @property
    def acc(self) -> float | None:
        return 100.0 * self.correct / self.labelled if self.labelled else None

    @property
    def agreement(self) -> float | None:
        return 100.0 * self.agree / self.agree_frames if self.agree_frames else None

    def to_dict(self) -> dict:
        return {"frames": self.frames, "labelled_frames": self.labelled, "correct": self.correct,
                "acc": self.acc, "agreement": self.agreement}


def domain_tally(row: Mapping) -> Tally:
    """One domain row of a replay result."""
    frames = int(row["frames"])
    labelled = row.get("correct") is not None
    agreement = row.get("agreement")
    return Tally(frames, frames if labelled else 0, int(row["correct"] or 0),
                 0.0 if agreement is None else agreement * frames / 100.0,
                 0 if agreement is None else frames)


def method_tallies(result: Mapping) -> dict[str, Tally]:
    """Per method of one replay result, its domains added up."""
    out = {}
    for name, run in result["methods"].items():
        total = Tally()
        for row in run["domains"]:
            total.add(domain_tally(row))
        out[name] = total
    return out


def bag_row(record: Mapping, result: Mapping | None) -> dict:
    """The per-bag line of the fleet report: the record and, if it ran, per method its tally,
    costs and bank."""
    row = {k: record.get(k) for k in ("bag", "robot", "mission", "split", "phase", "status",
                                       "key", "attempts", "errors", "bank_in", "bank_from",
                                       "bank_out", "seconds", "host", "node")}
    if result is None:
        return row
    row["labelled"] = bool(result.get("labelled"))
    row["frames"] = int(result["run"]["frames"])
    row["peak_rss_mb"] = result["run"].get("peak_rss_mb")
    row["methods"] = {}
    for name, tally in method_tallies(result).items():
        run = result["methods"][name]
        costs = run["costs"]
        row["methods"][name] = {
            **tally.to_dict(), "ms_per_frame": costs["ms_per_frame"],
            "timed_frames": costs.get("timed_frames", 0),
            "forward_per_frame": costs["forward_per_frame"],
            "adapt_steps": costs["adapt_steps"], "domain_changes": run["domain_changes"],
            "bank_entries": run["bank"]["entries"]}
    return row


def harm_rows(record: Mapping, result: Mapping) -> list[dict]:
    """Per labelled domain of one replay and method other than ``none``: both accuracies on
    the domain's frames and their difference."""
    runs = result["methods"]
    if REFERENCE not in runs:
        return []
    rows = []
    for method, run in runs.items():
        if method == REFERENCE:
            continue
        for mine, ref in zip(run["domains"], runs[REFERENCE]["domains"], strict=True):
            if mine.get("correct") is None:
                continue
            frames = int(mine["frames"])
            acc, ref_acc = (100.0 * int(r["correct"]) / frames if frames else 0.0
                            for r in (mine, ref))
            rows.append({"bag": record["bag"], "robot": record["robot"],
                         "mission": record["mission"], "method": method,
                         "domain": mine["name"], "round": mine["round"], "frames": frames,
                         "correct": int(mine["correct"]), "none_correct": int(ref["correct"]),
                         "acc": acc, "none_acc": ref_acc, "delta": acc - ref_acc})
    return rows


def harm_table(rows: Iterable[Mapping], by: Callable[[Mapping], tuple]) -> list[dict]:
    """``rows`` of :func:`harm_rows` added up per ``by(row)`` (a tuple of names, the method
    first): frames, both accuracies over all their frames, the difference, and how many of the
    (bag, domain) rows lost accuracy."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        g = groups.setdefault(by(r), {"frames": 0, "correct": 0, "none_correct": 0,
                                      "rows": 0, "harmed": 0})
        g["frames"] += r["frames"]
        g["correct"] += r["correct"]
        g["none_correct"] += r["none_correct"]
        g["rows"] += 1
        g["harmed"] += r["delta"] < 0
    out = []
    for key, g in groups.items():
        acc = 100.0 * g["correct"] / g["frames"] if g["frames"] else 0.0
        ref = 100.0 * g["none_correct"] / g["frames"] if g["frames"] else 0.0
        out.append({"group": list(key), "frames": g["frames"], "acc": acc, "none_acc": ref,
                    "delta": acc - ref, "rows": g["rows"], "harmed_rows": g["harmed"]})
    return sorted(out, key=lambda r: r["group"])


def summarize(records: Iterable[Mapping], results: Mapping[str, Mapping],
              bank_method: str | None = None) -> dict:
    """The fleet summary (see the module docstring) of the task records; ``results``: the
    replay results by key; ``bank_method``: the method whose banks travel (for transfer)."""
    records = list(records)
    done = [r for r in records if r["status"] in DONE and r["key"] in results]
    rows = [bag_row(r, results.get(r["key"]) if r["status"] in DONE else None) for r in records]
    missions = [r for r in done if r["phase"] == MISSIONS]
    robots: dict[str, dict[str, Tally]] = {}
    fleet: dict[str, Tally] = {}
    harm: list[dict] = []
    for record in missions:
        result = results[record["key"]]
        for method, tally in method_tallies(result).items():
            robots.setdefault(record["robot"], {}).setdefault(method, Tally()).add(tally)
            fleet.setdefault(method, Tally()).add(tally)
        harm += harm_rows(record, result)
    return {
        "bags": rows,
        "robots": {robot: {m: t.to_dict() for m, t in tallies.items()}
                   for robot, tallies in robots.items()},
        "fleet": {m: t.to_dict() for m, t in fleet.items()},
        "harm": {
            "by_domain": harm_table(harm, lambda r: (r["method"], r["domain"])),
            "by_robot": harm_table(harm, lambda r: (r["method"], r["robot"])),
            "by_robot_domain": harm_table(harm, lambda r: (r["method"], r["robot"],
                                                           r["domain"])),
            "rows": harm,
            "worst": sorted((r for r in harm if r["delta"] < 0),
                            key=lambda r: (r["delta"], -r["frames"]))[:WORST],
        },
        "costs": costs(missions, results),
        "transfer": transfer(done, results, bank_method),
    }


def costs(records: list[Mapping], results: Mapping[str, Mapping]) -> dict:
    """Per method the engine's time and forward passes per frame (weighted by frames); per task
    the wall time of the whole replay (reading the bag, building the engines) per frame."""
    per_method: dict[str, list[float]] = {}
    frames = seconds = 0.0
    for record in records:
        result = results[record["key"]]
        frames += result["run"]["frames"]
        seconds += float(record.get("seconds") or 0.0)
        for name, run in result["methods"].items():
            c = run["costs"]
            timed = c.get("timed_frames", 0) or 0
            acc = per_method.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            acc[0] += c["ms_per_frame"] * timed
            acc[1] += timed
            acc[2] += c["forward_per_frame"] * result["run"]["frames"]
            acc[3] += result["run"]["frames"]
    return {
        "methods": {m: {"ms_per_frame": a[0] / a[1] if a[1] else None,
                        "forward_per_frame": a[2] / a[3] if a[3] else None}
                    for m, a in per_method.items()},
        "task_ms_per_frame": 1e3 * seconds / frames if frames else None,
        "frames": int(frames), "task_seconds": seconds,
    }


def transfer(records: list[Mapping], results: Mapping[str, Mapping],
             bank_method: str | None) -> dict | None:
    """On each held-out bag replayed both ways, ``bank_method``'s accuracy (agreement without
    labels) from the fleet bank and from an empty bank, per bag, per domain and over all
    held-out frames."""
    by_phase = {(r["bag"], r["phase"]): r for r in records}
    pairs = [(by_phase[(bag, HOLDOUT_FLEET)], by_phase.get((bag, HOLDOUT_EMPTY)))
             for bag, phase in by_phase if phase == HOLDOUT_FLEET]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if bank_method is None or not pairs:
        return None
    bags, domains = [], {}
    fleet_total, empty_total = Tally(), Tally()
    for with_fleet, empty in pairs:
        runs = [results[r["key"]]["methods"][bank_method] for r in (with_fleet, empty)]
        tallies = [Tally(), Tally()]
        for rows in zip(*(run["domains"] for run in runs), strict=True):
            parts = [domain_tally(row) for row in rows]
            d = domains.setdefault(rows[0]["name"], [Tally(), Tally()])
            for total, part, dom in zip(tallies, parts, d):
                total.add(part)
                dom.add(part)
        fleet_total.add(tallies[0])
        empty_total.add(tallies[1])
        bags.append({"bag": with_fleet["bag"], "robot": with_fleet["robot"],
                     "mission": with_fleet["mission"], **_pair(*tallies)})
    return {"method": bank_method, "bags": bags,
            "domains": [{"domain": name, **_pair(*t)} for name, t in domains.items()],
            "all": _pair(fleet_total, empty_total)}


def _pair(fleet: Tally, empty: Tally) -> dict:
    metric = "acc" if fleet.labelled else "agreement"
    a, b = getattr(fleet, metric), getattr(empty, metric)
    return {"metric": metric, "frames": fleet.frames, "fleet_bank": a, "empty_bank": b,
            "delta": None if a is None or b is None else a - b}
