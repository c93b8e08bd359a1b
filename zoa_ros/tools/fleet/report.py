"""The fleet report: ``report.md`` and plots from ``fleet.json`` (:func:`write_fleet_report`),
and the summary ``zoa-ros fleet`` prints (:func:`print_summary`).

Plots (matplotlib, Agg): ``accuracy_by_bag.png`` - per bag, each method's accuracy against no
adaptation's on the same frames (below the diagonal: adaptation cost accuracy), or the
histogram of agreement with ``none`` when no bag has labels; ``harm_by_domain.png`` - per domain
the method's accuracy minus ``none``'s over the fleet; ``transfer.png`` (``--holdout-split``) -
per held-out bag, the bank method from the fleet bank and from an empty bank.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from zoa_ros.core.eval.fleet.aggregate import REFERENCE
from zoa_ros.core.files.atomic import atomic_write_bytes

DELTA_NOTE = ("Δ: the method's top-1 accuracy minus `none`'s (no adaptation) on the same frames, "
              "in points; negative = adaptation cost accuracy.")


def table(header: Sequence[str], rows: Sequence[Sequence[object]],
          align: str | None = None) -> list[str]:
    """A Markdown table; ``align``: one letter per column, ``l`` or ``r`` (default: the first
    column left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    line = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(str(c) for c in cells) + " |"
            for cells in (list(header), line, *rows)]


def num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def score(tally: dict | None) -> float | None:
    """Accuracy where the frames have labels, else agreement with ``none``."""
    if not tally:
        return None
    return tally["acc"] if tally.get("labelled_frames") else tally.get("agreement")


def adapting(fleet: dict) -> list[str]:
    return [m for m in fleet["config"]["methods"] if m != REFERENCE]


def markdown(fleet: dict) -> str:
    config, run, summary = fleet["config"], fleet["run"], fleet["summary"]
    records = fleet["records"]
    count = {s: sum(r["status"] == s for r in records) for s in ("ok", "cached", "failed")}
    memory = run["task_memory_mb"]
    probe = run.get("cost_probe") or {}
    lines = ["# zoa-ros fleet", "",
             f"- pack: `{config['pack']}` (fingerprint `{config['pack_fingerprint'][:12]}`)",
             f"- methods: {', '.join(config['methods'])}; mode {config['mode']}, batch size "
             f"{config['batch_size']}, seed {config['seed']}"
             + (f", first {config['limit']} frames per bag" if config["limit"] else ""),
             f"- replays: {len(records)} ({count['ok']} run, {count['cached']} found stored "
             f"from an earlier run, {count['failed']} failed) of "
             f"{len({r['bag'] for r in records})} bags from "
             f"{len({r['robot'] for r in records})} robots"
             + (f"; knowledge banks carried from mission to mission ({config['bank_method']})"
                if config["carry_bank"] else ""),
             f"- executor: {_executor(run)}; per replay {run['task_cpus']} CPU, "
             f"{_memory(memory)} memory"
             + (f" (a fresh worker peaked at {probe['peak_rss_mb']:.0f} MB resident with the "
                f"pack and {len(config['methods'])} engines)" if probe else ""),
             f"- wall time {run['wall_s']:.1f} s"]
    for phase in run["phases"]:
        fps = phase["frames_per_s_per_cpu"]
        lines.append(f"  - {phase['phase']}: {phase['bags']} bags in {phase['wall_s']:.1f} s"
                     + (f", {fps:.2f} frames/s per CPU over {phase['frames_replayed']} frames "
                        f"replayed, workers busy {100 * phase['utilisation']:.0f} % of the time"
                        if fps else ""))
    lines += _fleet_section(fleet) + _robot_section(fleet) + _harm_section(fleet)
    lines += _bag_section(fleet) + _failure_section(records) + _bank_section(fleet)
    lines += _cost_section(fleet)
    lines += ["", "## Plots", "", "![accuracy by bag](accuracy_by_bag.png)", "",
              "![harm by domain](harm_by_domain.png)"]
    if summary.get("transfer"):
        lines += ["", "![transfer](transfer.png)"]
    return "\n".join(lines) + "\n"


def _executor(run: dict) -> str:
    if run["executor"] == "ray":
        origin = "a local Ray instance" if run["started_local_instance"] else \
            f"Ray cluster `{run['address']}`"
        return f"{origin}, {run['nodes']} nodes, {run['cluster_cpus']:g} CPUs"
    return f"local process pool, {run['workers']} workers"


def _memory(values: list[int]) -> str:
    if not values:
        return "—"
    return f"{values[0]} MB" if len(values) == 1 else f"{values[0]}–{values[-1]} MB"


def _fleet_section(fleet: dict) -> list[str]:
    summary, methods = fleet["summary"], fleet["config"]["methods"]
    costs = summary["costs"]["methods"]
    ref = summary["fleet"].get(REFERENCE)
    rows = []
    for m in methods:
        t = summary["fleet"].get(m)
        if not t:
            continue
        delta = None if t["acc"] is None or ref is None or ref["acc"] is None \
            else t["acc"] - ref["acc"]
        c = costs.get(m, {})
        rows.append([m, t["frames"], t["labelled_frames"], num(t["acc"]), num(delta, 2, True),
                     num(t["agreement"]), num(c.get("ms_per_frame")),
                     num(c.get("forward_per_frame"), 3)])
    return ["", "## Fleet-wide", "",
            "Counted over frames: every bag weighs by its length. Agreement: frames on which "
            "the method predicts what `none` predicts (no labels needed).", "",
            *table(["method", "frames", "labelled frames", "top-1 %", "Δ vs none",
                    "agreement with none %", "ms/frame", "fwd/frame"], rows)]


def _robot_section(fleet: dict) -> list[str]:
    summary = fleet["summary"]
    bags: dict[str, int] = {}
    for r in fleet["records"]:
        if r["phase"] == "missions":
            bags[r["robot"]] = bags.get(r["robot"], 0) + 1
    others = adapting(fleet)
    rows = []
    for robot, tallies in sorted(summary["robots"].items()):
        ref = score(tallies.get(REFERENCE))
        cells = [robot, bags.get(robot, 0), tallies[REFERENCE]["frames"],
                 "acc" if tallies[REFERENCE]["labelled_frames"] else "agree", num(ref)]
        for m in others:
            value = score(tallies.get(m))
            cells += [num(value), num(None if value is None or ref is None else value - ref,
                                      2, True)]
        rows.append(cells)
    header = ["robot", "bags", "frames", "metric", REFERENCE]
    for m in others:
        header += [m, f"Δ {m}"]
    return ["", "## Per robot", "",
            "`acc`: top-1 % over the robot's labelled frames; `agree`: % agreement with `none` "
            "(bags without labels; `none` is 100 by definition).", "",
            *table(header, rows, "lrrl" + "r" * (len(header) - 4))]


def _harm_section(fleet: dict) -> list[str]:
    harm = fleet["summary"]["harm"]
    if not harm["rows"]:
        return ["", "## Harm against no adaptation", "",
                "No labelled frames: harm needs labels (see agreement above)."]
    lines = ["", "## Harm against no adaptation", "", DELTA_NOTE, ""]
    for title, key, names in (("Per domain", "by_domain", ["domain"]),
                              ("Per robot", "by_robot", ["robot"])):
        rows = [[*g["group"], g["frames"], num(g["none_acc"]), num(g["acc"]),
                 num(g["delta"], 2, True), f"{g['harmed_rows']} of {g['rows']}"]
                for g in harm[key]]
        lines += ["", f"### {title}", "",
                  *table(["method", *names, "frames", "none", "method", "Δ",
                          "(bag, domain) harmed"], rows, "l" * (1 + len(names)) + "rrrrr")]
    robot_domain = [g for g in harm["by_robot_domain"] if g["delta"] < 0]
    if robot_domain:
        rows = [[*g["group"], g["frames"], num(g["none_acc"]), num(g["acc"]),
                 num(g["delta"], 2, True)] for g in sorted(robot_domain,
                                                           key=lambda g: g["delta"])]
        lines += ["", "### Robots and domains where adaptation cost accuracy", "",
                  *table(["method", "robot", "domain", "frames", "none", "method", "Δ"], rows,
                         "lllrrrr")]
    lines += ["", "### Worst cases (bag, domain)", ""]
    if harm["worst"]:
        rows = [[w["method"], f"{w['robot']}/{w['mission']}", w["round"], w["domain"],
                 w["frames"], num(w["none_acc"]), num(w["acc"]), num(w["delta"], 2, True)]
                for w in harm["worst"]]
        lines += table(["method", "robot/mission", "round", "domain", "frames", "none",
                        "method", "Δ"], rows, "llrlrrrr")
    else:
        lines.append("No (bag, domain) lost accuracy against `none`.")
    return lines


def _bag_section(fleet: dict) -> list[str]:
    others = adapting(fleet)
    rows = []
    for bag in fleet["summary"]["bags"]:
        methods = bag.get("methods") or {}
        ref = score(methods.get(REFERENCE))
        cells = [bag["robot"], bag["mission"], bag["split"] or "", bag["phase"], bag["status"],
                 bag.get("frames", "—"),
                 "—" if not methods else "acc" if bag.get("labelled") else "agree", num(ref)]
        for m in others:
            value = score(methods.get(m))
            cells += [num(value), num(None if value is None or ref is None else value - ref,
                                      2, True)]
        bank = (methods.get(fleet["config"]["bank_method"]) or {}).get("bank_entries")
        cells += ["—" if bank is None else bank, num(bag.get("seconds"), 1),
                  f"from {bag['bank_from']}" if bag.get("bank_from") else
                  "fleet bank" if bag["phase"] == "holdout-fleet-bank" else ""]
        rows.append(cells)
    header = ["robot", "mission", "split", "phase", "status", "frames", "metric", REFERENCE]
    for m in others:
        header += [m, f"Δ {m}"]
    header += ["bank entries", "s", "bank loaded"]
    return ["", "## Per bag", "", "Status `cached`: the result stored by an earlier run for "
            "the same bag, pack, options and loaded bank.", "",
            *table(header, rows, "lllllrl" + "r" * (len(header) - 8) + "l")]


def _failure_section(records: list[dict]) -> list[str]:
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return []
    rows = [[r["name"], f"`{r['bag']}`", r["attempts"], "; ".join(dict.fromkeys(r["errors"]))]
            for r in failed]
    return ["", "## Failed bags", "", "Each was tried twice; no other bag's result is "
            "affected. A rerun tries them again.", "",
            *table(["bag", "path", "attempts", "reasons"], rows, "llrl")]


def _bank_section(fleet: dict) -> list[str]:
    merge, transfer = fleet["merge"], fleet["summary"].get("transfer")
    if not merge:
        return []
    lines = ["", "## Knowledge banks", ""]
    if merge["robots"]:
        rows = [[b["robot"], b["mission"], f"`{b['bank']}`"] for b in merge["robots"]]
        lines += ["Each robot's final bank (its last mission that ended with one):", "",
                  *table(["robot", "mission", "bank"], rows, "lll"), ""]
    if merge.get("path"):
        lines.append(f"Fleet bank `{merge['path']}`: {merge['entries']} entries of "
                     f"{merge['inputs_entries']} from {len(merge['robots'])} robots "
                     f"({merge['pruned']} pruned, capacity {merge['capacity']}).")
    elif merge.get("error"):
        lines.append(f"The bank merge failed: {merge['error']}")
    else:
        lines.append("No robot ended with a bank: no fleet bank.")
    if transfer:
        metric = "top-1 %" if transfer["all"]["metric"] == "acc" else "agreement with none %"
        rows = [[f"{b['robot']}/{b['mission']}", b["frames"], num(b["fleet_bank"]),
                 num(b["empty_bank"]), num(b["delta"], 2, True)] for b in transfer["bags"]]
        a = transfer["all"]
        rows.append(["**all held-out frames**", a["frames"], f"**{num(a['fleet_bank'])}**",
                     f"**{num(a['empty_bank'])}**", f"**{num(a['delta'], 2, True)}**"])
        domains = [[d["domain"], d["frames"], num(d["fleet_bank"]), num(d["empty_bank"]),
                    num(d["delta"], 2, True)] for d in transfer["domains"]]
        lines += ["", "### Does fleet knowledge transfer? (held-out missions)", "",
                  f"`{transfer['method']}` on the held-out bags, starting from the fleet bank "
                  f"and from an empty bank ({metric}); Δ > 0: the fleet bank helps on missions "
                  "none of the merged banks saw.", "",
                  *table(["bag", "frames", "fleet bank", "empty bank", "Δ"], rows), "",
                  *table(["domain", "frames", "fleet bank", "empty bank", "Δ"], domains)]
    return lines


def _cost_section(fleet: dict) -> list[str]:
    costs = fleet["summary"]["costs"]
    rows = [[m, num(c["ms_per_frame"]), num(c["forward_per_frame"], 3)]
            for m, c in costs["methods"].items()]
    return ["", "## Costs per frame", "",
            f"Engine time per frame, per method, weighted by frames. A whole replay (reading "
            f"the bag, building one engine per method, all methods) took "
            f"{num(costs['task_ms_per_frame'], 1)} ms per frame over {costs['frames']} frames.",
            "", *table(["method", "ms/frame", "fwd/frame"], rows)]


# ---- plots -----------------------------------------------------------------------------------

def write_fleet_report(fleet: dict, folder: str | Path) -> list[Path]:
    """Write ``report.md`` and the plots into ``folder``; their paths."""
    folder = Path(folder)
    written = [folder / "report.md"]
    atomic_write_bytes(written[0], markdown(fleet).encode())
    plots = {"accuracy_by_bag.png": _accuracy_plot, "harm_by_domain.png": _harm_plot}
    if fleet["summary"].get("transfer"):
        plots["transfer.png"] = _transfer_plot
    for name, draw in plots.items():
        atomic_write_bytes(folder / name, _png(draw, fleet))
        written.append(folder / name)
    return written


def _png(draw, fleet: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=110)
    draw(fig.add_subplot(), fleet)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _accuracy_plot(ax, fleet: dict) -> None:
    bags = [b for b in fleet["summary"]["bags"] if b.get("methods") and b["phase"] == "missions"]
    labelled = [b for b in bags if b["labelled"]]
    if labelled:
        for i, m in enumerate(adapting(fleet)):
            ax.scatter([b["methods"][REFERENCE]["acc"] for b in labelled],
                       [b["methods"][m]["acc"] for b in labelled], s=14, alpha=0.7,
                       color=f"C{i}", label=m)
        ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8, linestyle="--")
        ax.set(xlim=(-1, 101), ylim=(-1, 101), xlabel="none: top-1 % (no adaptation)",
               ylabel="method: top-1 % on the same frames",
               title=f"Per bag ({len(labelled)} labelled bags); below the line: adaptation hurt")
    else:
        for i, m in enumerate(adapting(fleet)):
            ax.hist([b["methods"][m]["agreement"] for b in bags], bins=20, range=(0, 100),
                    alpha=0.6, color=f"C{i}", label=m)
        ax.set(xlabel="agreement with none (%)", ylabel="bags",
               title=f"Per bag ({len(bags)} bags without labels)")
    if adapting(fleet):
        ax.legend(fontsize=8)


def _harm_plot(ax, fleet: dict) -> None:
    groups = fleet["summary"]["harm"]["by_domain"]
    if not groups:
        ax.text(0.5, 0.5, "no labelled frames: no harm table", ha="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    methods = adapting(fleet)
    domains = sorted({g["group"][1] for g in groups})
    height = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        delta = {g["group"][1]: g["delta"] for g in groups if g["group"][0] == m}
        ax.barh([d + i * height for d in range(len(domains))],
                [delta.get(d, 0.0) for d in domains], height=height, color=f"C{i}", label=m)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks([d + 0.4 - height / 2 for d in range(len(domains))], domains, fontsize=7)
    ax.set(xlabel="top-1 minus none's on the same frames (points)",
           title="Per domain over the fleet; left of 0: adaptation hurt")
    ax.legend(fontsize=8)


def _transfer_plot(ax, fleet: dict) -> None:
    transfer = fleet["summary"]["transfer"]
    names = [f"{b['robot']}/{b['mission']}" for b in transfer["bags"]]
    x = range(len(names))
    for offset, key, colour in ((-0.2, "fleet_bank", "C0"), (0.2, "empty_bank", "C1")):
        ax.bar([i + offset for i in x], [b[key] or 0.0 for b in transfer["bags"]], width=0.4,
               color=colour, label=key.replace("_", " "))
    ax.set_xticks(list(x), names, rotation=45, ha="right", fontsize=7)
    metric = "top-1 %" if transfer["all"]["metric"] == "acc" else "agreement with none %"
    ax.set(ylabel=metric, title=f"Held-out missions: {transfer['method']} from the fleet bank "
                                f"vs an empty bank (Δ {num(transfer['all']['delta'], 2, True)})")
    ax.legend(fontsize=8)


def print_summary(fleet: dict) -> None:
    """Fleet-wide numbers, the worst harm and the transfer number, on stdout."""
    summary = fleet["summary"]
    ref = summary["fleet"].get(REFERENCE) or {}
    print(f"{'method':10s} {'frames':>8s} {'top-1 %':>8s} {'Δ none':>7s} {'agree %':>8s}")
    for m, t in summary["fleet"].items():
        delta = None if t["acc"] is None or ref.get("acc") is None else t["acc"] - ref["acc"]
        print(f"{m:10s} {t['frames']:8d} {num(t['acc']):>8s} {num(delta, 2, True):>7s} "
              f"{num(t['agreement']):>8s}")
    worst = summary["harm"]["worst"]
    if worst:
        w = worst[0]
        print(f"worst harm: {w['method']} on {w['robot']}/{w['mission']} {w['domain']} "
              f"{num(w['delta'], 2, True)} points ({w['frames']} frames)")
    transfer = summary.get("transfer")
    if transfer:
        a = transfer["all"]
        print(f"hold-out transfer ({transfer['method']}, {a['frames']} frames): fleet bank "
              f"{num(a['fleet_bank'])} vs empty bank {num(a['empty_bank'])} "
              f"({num(a['delta'], 2, True)})")
    failed = [r for r in fleet["records"] if r["status"] == "failed"]
    for r in failed:
        print(f"failed: {r['name']}: {'; '.join(dict.fromkeys(r['errors']))}")
