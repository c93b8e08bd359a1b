"""Markdown table and accuracy plot of an evaluation result (``evaluation.evaluate`` output);
``zoa-ros report RESULT.json --out DIR`` renders them again from a saved result."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

from zoa_ros.core.eval.harm import HEAD_FRAMES, harm_table
from zoa_ros.core.files.atomic import atomic_write_bytes


def write_report(result: dict, folder: str | Path, against: dict | None = None,
                 against_name: str = "the other run") -> list[Path]:
    """Write ``report.md`` and the plot into ``folder``; returns their paths. The plot is
    ``accuracy.png`` for a labelled stream, else ``agreement.png`` (``entropy.png`` without the
    reference method ``none``). ``against``: another result on the same stream layout, compared
    method by method (:func:`comparison_section`)."""
    folder = Path(folder)
    metric = plot_metric(result)
    md = folder / "report.md"
    text = markdown(result)
    if against is not None:
        text += "\n".join(comparison_section(result, against, against_name)) + "\n"
    atomic_write_bytes(md, text.encode())
    if metric is None:   # a live replay without labels has no per-frame curve
        return [md]
    png = folder / ("accuracy.png" if metric == "acc" else f"{metric}.png")
    atomic_write_bytes(png, accuracy_plot(result))
    return [md, png]


def plot_metric(result: dict) -> str | None:
    """What the plot shows: ``acc``, else ``agreement`` (with ``none``), else ``entropy``;
    ``None`` when the methods have no curve of it."""
    if result.get("labelled", True):
        metric = "acc"
    else:
        metric = "agreement" if "none" in result["methods"] else "entropy"
    if any(r["curve"].get(metric) is None for r in result["methods"].values()):
        return None
    return metric


def markdown(result: dict) -> str:
    methods = list(result["methods"])
    runs = result["methods"]
    config = result.get("config", {})
    labelled = result.get("labelled", True)
    lines = [f"# zoa-ros {config.get('tool', 'evaluate')}", ""]
    pack = config.get("pack_info", {})
    if pack:
        lines += [f"- pack: `{config.get('pack')}` — {pack.get('model')} {pack.get('quant')}, "
                  f"fingerprint `{str(pack.get('fingerprint', ''))[:12]}`"]
    for key in ("mode", "batch_size", "seed", "layout", "severity", "rounds", "limit"):
        if key in config:
            lines.append(f"- {key}: {config[key]}")
    stream = config.get("stream", {})
    if stream.get("kind") == "rosbag2":
        lines.append(f"- bag: `{stream['path']}`, topic `{stream['image_topic']}` "
                     f"({stream['image_type']}), labels: {stream['labels'] or 'none'}; "
                     f"{stream['messages']} messages read, {stream['malformed']} malformed "
                     f"skipped, {stream['unlabelled_skipped']} without a label skipped")
    run = result.get("run", {})
    if run:
        threads = run.get("torch_threads")
        lines.append(f"- {run['frames']} frames per method, {run['wall_s']:.1f} s wall "
                     f"({run['frames_per_s']:.1f} frames/s, all methods), device "
                     f"{run['device']}" + (f", {threads} torch threads" if threads else ""))
    if "live" in result:
        lines += live_section(result["live"])
    if labelled:
        lines += _domain_table(result, "Top-1 accuracy (%) per domain", "acc", "{:.2f}")
        lines += ["", "## Mean accuracy (%) per round", "", _row(["round", *methods]),
                  _row(["---:", *["---:"] * len(methods)])]
        for i, r in enumerate(runs[methods[0]]["rounds"]):
            lines.append(_row([r["round"], *[_fmt(runs[m]['rounds'][i]['mean_acc'], "{:.2f}")
                                             for m in methods]]))
        lines.append(_row(["**all**", *[f"**{_fmt(runs[m]['mean_acc'], '{:.2f}')}**"
                                        for m in methods]]))
        lines += harm_section(harm_table(result))
        lines += _recovery_table(result)
        lines += _position_table(result)
    else:
        lines += ["", "No labels: the numbers below need none. Agreement is with the "
                  "unadapted model `none` on the same frames; entropy is the mean prediction "
                  "entropy (lower = more confident, which is not the same as more accurate); "
                  "the domain changes each method detected are in the costs table."]
        if "none" in runs:
            lines += _domain_table(result, "Agreement with `none` (%) per domain",
                                   "agreement", "{:.2f}", "mean_agreement")
        lines += _domain_table(result, "Mean prediction entropy (nats) per domain", "entropy",
                               "{:.3f}", "mean_entropy")
    lines += ["", "## Costs", "",
              _row(["method", "fwd/frame", "bwd/frame", "ms/frame", "peak MB", "state MB",
                    "adapt steps", "domain changes", "bank entries", "bank KB"]),
              _row(["---", *["---:"] * 9])]
    for m in methods:
        c = runs[m]["costs"]
        kb = runs[m]["bank"]["bytes"]
        lines.append(_row([m, _fmt(c["forward_per_frame"], "{:.3f}"),
                           _fmt(c["backward_per_frame"], "{:.3f}"),
                           _fmt(c["ms_per_frame"], "{:.2f}"), _fmt(c["peak_mb"], "{:.1f}"),
                           _fmt(c["state_mb"], "{:.1f}"), c["adapt_steps"],
                           runs[m]["domain_changes"], runs[m]["bank"]["entries"],
                           _fmt(None if kb is None else kb / 1024, "{:.1f}")]))
    lines += _method_notes(runs, config.get("mode"))
    notes = run.get("notes", {})
    if notes:
        lines += ["", "## What the numbers mean", ""]
        lines += [f"- **{k}**: {v}" for k, v in notes.items()]
    return "\n".join(lines) + "\n"


def _method_notes(runs: dict, mode: str | None) -> list[str]:
    """What a reader must know next to a method's numbers: its own caveat (e.g. TENT through
    fake quantization, ``norm`` on a LayerNorm model), why it cannot classify single frames
    (streaming runs), and the memory of its autograd graph."""
    lines = []
    for name, run in runs.items():
        notes = [run["note"]] if run.get("note") else []
        streaming = run.get("streaming") or {}
        if mode == "streaming" and streaming.get("supported") is False:
            notes.append(f"not supported in streaming mode: {streaming.get('reason')}")
        graph = (run.get("costs") or {}).get("graph_mb")
        if graph:
            notes.append(f"autograd graph of one adaptation step: {graph:.1f} MiB")
        lines += [f"- **{name}**: {note}" for note in notes]
    return ["", "## Method notes", "", *lines] if lines else []


def live_section(live: dict) -> list[str]:
    """The ``live`` part of a ``zoa-ros replay --live`` result: frames, drops, latency, the
    node's counters and the comparison with the offline engine."""
    origin = "started for this replay" if live["started_node"] else "already running"
    lines = ["", "## Live replay", "",
             f"- node `{live['node']}` ({origin}), "
             f"method `{live['method']}`, input `{live['topic']}` published {live['qos']} at "
             f"{live['rate']:g}x the recorded rate{', with /clock' if live['clock'] else ''}",
             f"- frames published {live['frames_published']}, answered "
             f"{live['frames_answered']}, dropped {live['frames_dropped']}"
             + (f" ({live['unmatched_answers']} answers matched no published frame)"
                if live["unmatched_answers"] else "")]
    counters = live.get("node_counters")
    if counters:
        lines.append(f"- the node's counters over the replay: received {counters['received']}, "
                     f"classified {counters['classified']}, replaced before classification "
                     f"{counters['dropped']}, malformed {counters['malformed']}")
    for key, title in (("inference", "inference (node)"), ("end_to_end", "end to end")):
        lat = live["latency_ms"].get(key)
        if lat:
            lines.append(f"- {title} latency ms: p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
                         f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}")
    if live["dropped"]:
        shown = ", ".join(str(d["index"]) for d in live["dropped"][:40])
        more = live["frames_dropped"] - min(len(live["dropped"]), 40)
        lines.append(f"- dropped frames (stream index): {shown}"
                     + (f" and {more} more" if more > 0 else ""))
    offline = live.get("offline")
    if offline:
        lines += ["", "### Live node against the offline engine", "",
                  f"Same prediction on {offline['same']} of the {offline['compared']} answered "
                  f"frames ({_fmt(offline['agreement'], '{:.2f}')} %); first difference at "
                  f"frame {_fmt(offline['first_difference'], '{}')}. Offline adaptation steps: "
                  f"{offline['adapt_steps']}."]
        if any(d["offline_acc_all"] is not None for d in offline["domains"]):
            lines += ["", _row(["round", "domain", "live acc", "offline acc (answered frames)",
                                "offline acc (all frames)"]),
                      _row(["---:", "---", "---:", "---:", "---:"])]
        for d in [d for d in offline["domains"] if d["offline_acc_all"] is not None]:
            lines.append(_row([d["round"], d["name"], _fmt(d["live_acc"], "{:.2f}"),
                               _fmt(d["offline_acc_answered"], "{:.2f}"),
                               _fmt(d["offline_acc_all"], "{:.2f}")]))
    return lines


def _domain_table(result: dict, title: str, key: str, fmt: str,
                  mean_key: str | None = None) -> list[str]:
    runs, methods = result["methods"], list(result["methods"])
    lines = ["", f"## {title}", "", _row(["round", "domain", "frames", *methods]),
             _row(["---:", "---", "---:", *["---:"] * len(methods)])]
    for i, d in enumerate(runs[methods[0]]["domains"]):
        lines.append(_row([d["round"], d["name"], d["frames"],
                           *[_fmt(runs[m]["domains"][i].get(key), fmt) for m in methods]]))
    if mean_key is not None:
        lines.append(_row(["", "**mean**", "",
                           *[f"**{_fmt(runs[m].get(mean_key), fmt)}**" for m in methods]]))
    return lines


def harm_section(harm: dict | None) -> list[str]:
    """The harm table: per domain each method's accuracy minus the reference's on the same
    frames (whole segment, and its first frames), then mean, worst domain and clean segments."""
    if not harm or not harm["methods"]:
        return []
    ref, head = harm["reference"], harm["head_frames"]
    methods = list(harm["methods"])
    runs = [harm["methods"][m] for m in methods]
    lines = ["", f"## Harm: accuracy minus `{ref}`'s on the same frames (points)", "",
             f"Per domain, whole segment / its first {head} frames; negative = adapting cost "
             "accuracy. Clean segments in bold. With a shift gate, in brackets: the share of the "
             "domain's frames it let adaptation classify.", "",
             _row(["round", "domain", "frames", *methods]),
             _row(["---:", "---", "---:", *["---:"] * len(methods)])]
    for i, d in enumerate(runs[0]["domains"]):
        name = f"**{d['name']}**" if d["clean"] else d["name"]
        lines.append(_row([d["round"], name, d["frames"], *[_harm_cell(r["domains"][i])
                                                             for r in runs]]))
    summary = [("mean over domains", lambda r: _fmt(r["mean_diff"], "{:+.2f}")),
               (f"mean, first {head} frames", lambda r: _fmt(r["mean_diff_head"], "{:+.2f}")),
               ("worst domain", lambda r: f"{r['worst']['name']} (round {r['worst']['round']}) "
                                          f"{r['worst']['diff']:+.2f}"),
               ("clean segments: worst / mean",
                lambda r: f"{_fmt(r['clean_worst_diff'], '{:+.2f}')} / "
                          f"{_fmt(r['clean_mean_diff'], '{:+.2f}')} "
                          f"({r['clean_segments']} segments)"),
               ("shifted domains: worst / mean",
                lambda r: f"{_fmt(r['shifted_worst_diff'], '{:+.2f}')} / "
                          f"{_fmt(r['shifted_mean_diff'], '{:+.2f}')}")]
    lines += ["", _row(["", *methods]), _row(["---", *["---:"] * len(methods)])]
    lines += [_row([f"**{title}**", *[cell(r) for r in runs]]) for title, cell in summary]
    return lines


def comparison_section(result: dict, other: dict, name: str) -> list[str]:
    """Per domain, each method's accuracy minus its accuracy in ``other`` (the same stream
    layout, e.g. the same mission started from another knowledge bank), over the whole domain
    and its first frames; then the means."""
    methods = [m for m in result["methods"] if m in other.get("methods", {})]
    if not methods:
        raise ValueError("the two results have no method in common")
    ours, theirs = result["methods"], other["methods"]
    layout = [(d["name"], d["round"], d["frames"]) for d in ours[methods[0]]["domains"]]
    if layout != [(d["name"], d["round"], d["frames"]) for d in theirs[methods[0]]["domains"]]:
        raise ValueError("the two results are over different streams (domains, rounds, frames)")
    head = HEAD_FRAMES
    lines = ["", f"## Against {name} (points: this run minus that one)", "",
             f"Per domain, whole segment / its first {head} frames.", "",
             _row(["round", "domain", "frames", *methods]),
             _row(["---:", "---", "---:", *["---:"] * len(methods)])]
    sums = {m: [0.0, 0.0, 0] for m in methods}
    for i, (domain, round_, frames) in enumerate(layout):
        cells = []
        for m in methods:
            a, b = ours[m]["domains"][i], theirs[m]["domains"][i]
            diff = _sub(a.get("acc"), b.get("acc"))
            diff_head = _sub(a.get("acc_head"), b.get("acc_head"))
            if diff is not None and diff_head is not None:
                total = sums[m]
                total[0], total[1], total[2] = total[0] + diff, total[1] + diff_head, total[2] + 1
            cells.append(f"{_fmt(diff, '{:+.2f}')} / {_fmt(diff_head, '{:+.2f}')}")
        lines.append(_row([round_, domain, frames, *cells]))
    lines.append(_row(["", "**mean**", "", *[
        f"**{t[0] / t[2]:+.2f} / {t[1] / t[2]:+.2f}**" if t[2] else "—"
        for t in sums.values()]]))
    return lines


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _harm_cell(row: dict) -> str:
    cell = f"{_fmt(row['diff'], '{:+.2f}')} / {_fmt(row['diff_head'], '{:+.2f}')}"
    return cell if row.get("adapting") is None else f"{cell} ({row['adapting']:.0f} %)"


def _recovery_table(result: dict) -> list[str]:
    runs, methods = result["methods"], list(result["methods"])
    rows = [i for i, d in enumerate(runs[methods[0]]["domains"])
            if any(runs[m]["domains"][i].get("recovery_frames") is not None for m in methods)]
    if not rows:
        return []
    lines = ["", "## Recovery after each domain change (frames)", "",
             "Frames from the boundary until the method's accuracy over a window is back near "
             "its accuracy on the new domain (definition under *What the numbers mean*; "
             "lower is faster, 0 = no dip).", "",
             _row(["round", "domain", "frames", *methods]),
             _row(["---:", "---", "---:", *["---:"] * len(methods)])]
    for i in rows:
        d = runs[methods[0]]["domains"][i]
        lines.append(_row([d["round"], d["name"], d["frames"],
                           *[_fmt(runs[m]["domains"][i].get("recovery_frames"), "{}")
                             for m in methods]]))
    lines.append(_row(["", "**mean**", "", *[
        f"**{_fmt(runs[m].get('mean_recovery_frames'), '{:.1f}')}**" for m in methods]]))
    return lines


def position_accuracy(run: dict) -> dict[int, list[float | None]]:
    """Accuracy per round of the frames in the first chunk of each domain, the second chunk,
    and the rest (a chunk: ``batch_size`` frames; the curve's chunks never span two domains)."""
    bounds = np.cumsum([d["frames"] for d in run["domains"]])
    rounds = [d["round"] for d in run["domains"]]
    totals: dict[int, np.ndarray] = {}
    start, segment, position = 0, -1, 0
    for end, acc in zip(run["curve"]["frames"], run["curve"]["acc"], strict=True):
        here = int(np.searchsorted(bounds, start, side="right"))
        position = position + 1 if here == segment else 0
        segment = here
        bins = totals.setdefault(rounds[here], np.zeros((3, 2)))
        bins[min(position, 2)] += (acc * (end - start) / 100.0, end - start)
        start = end
    return {r: [100.0 * c / n if n else None for c, n in bins] for r, bins in totals.items()}


def _position_table(result: dict) -> list[str]:
    runs, methods = result["methods"], list(result["methods"])
    if any(not r.get("domains") or r["curve"].get("acc") is None for r in runs.values()):
        return []
    b = result.get("config", {}).get("batch_size", "?")
    lines = ["", "## Accuracy (%) by position in the domain", "",
             f"Frames in the first chunk of each domain ({b} frames after the change), the "
             "second chunk, and the rest of the domain, per round.", "",
             _row(["method", "round", f"first {b}", f"next {b}", "rest"]),
             _row(["---", "---:", "---:", "---:", "---:"])]
    for m in methods:
        for r, accs in sorted(position_accuracy(runs[m]).items()):
            lines.append(_row([m, r, *[_fmt(a, "{:.2f}") for a in accs]]))
    return lines


def _fmt(value: object, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def accuracy_plot(result: dict) -> bytes:
    """PNG: per-batch accuracy along the stream (a centred moving average that never crosses a
    domain boundary) and each domain's accuracy as a dashed step, one colour per method, with a
    vertical line at every domain boundary. Unlabelled streams: the same for the agreement with
    ``none`` (or, without ``none``, the mean prediction entropy)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    segments = result["stream"]
    edges = np.cumsum([0] + [s["frames"] for s in segments])
    fig = Figure(figsize=(max(8.0, min(0.35 * len(segments), 24.0)), 4.5), dpi=120)
    ax = fig.add_subplot()
    metric = plot_metric(result)
    mean_key, unit, axis = {
        "acc": ("mean_acc", " %", "top-1 accuracy (%)"),
        "agreement": ("mean_agreement", " %", "agreement with none (%)"),
        "entropy": ("mean_entropy", " nats", "mean prediction entropy (nats)")}[metric]
    chunks = len(next(iter(result["methods"].values()))["curve"]["frames"])
    window = max(1, min(9, chunks // max(len(segments), 1) // 3) | 1)  # odd
    top = 100.0 if unit == " %" else 1.1 * max(
        [max(r["curve"]["entropy"], default=0.0) for r in result["methods"].values()] + [1e-3])
    for (name, run), colour in zip(result["methods"].items(), _colours()):
        ends = np.asarray(run["curve"]["frames"])
        starts = np.concatenate([[0], ends[:-1]])
        values = np.asarray(run["curve"][metric], dtype=float)
        label = f"{name} (mean {_fmt(run[mean_key], '{:.1f}' if unit == ' %' else '{:.3f}')}" \
                f"{unit})"
        for i, domain in enumerate(run["domains"]):
            inside = (ends > edges[i]) & (ends <= edges[i + 1])
            if inside.any():
                ax.plot((starts[inside] + ends[inside]) / 2, _smooth(values[inside], window),
                        color=colour, linewidth=1.2, label=label if i == 0 else None)
            level = np.nan if domain[metric] is None else domain[metric]
            ax.plot(edges[i:i + 2], [level] * 2, color=colour, linewidth=1.0, linestyle="--",
                    alpha=0.6)
    for i, edge in enumerate(edges):
        ax.axvline(edge, color="grey", linewidth=0.5, alpha=0.6)
        if i < len(segments) and len(segments) <= 60:
            ax.text(edge, 1.01, segments[i]["name"], rotation=90, fontsize=6, va="bottom",
                    transform=ax.get_xaxis_transform())
    ax.set_xlim(0, max(int(edges[-1]), 1))
    ax.set_ylim(*((-1, 101) if unit == " %" else (0, top)))  # 0 and 100 % lines stay visible
    ax.set_xlabel("frames in stream")
    ax.set_ylabel(axis)
    ax.legend(loc="lower right", fontsize=7, title_fontsize=7, framealpha=0.8,
              title=("per batch" if window == 1 else f"per batch, moving average of {window}")
              + "; dashed: domain mean")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; near the ends it averages over the values that exist."""
    if window <= 1 or len(values) < 2:
        return values
    kernel = np.ones(window)
    total = np.convolve(values, kernel, mode="same")
    count = np.convolve(np.ones_like(values), kernel, mode="same")
    return total / count


def _colours() -> list[str]:
    return [f"C{i % 10}" for i in range(100)]


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the Markdown report and plot of a saved "
                       "evaluate / replay result (its --json file) again")
    p.add_argument("result", help="the JSON an evaluate or replay run wrote with --json")
    p.add_argument("--out", required=True, help="folder for report.md and the plot")
    p.add_argument("--against", metavar="OTHER.json",
                   help="another result over the same stream (e.g. the same mission from an "
                        "empty knowledge bank): adds each method's per-domain difference")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = _read_result(Path(args.result))
    against = None if args.against is None else _read_result(Path(args.against))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for written in write_report(result, args.out, against, f"`{args.against}`"):
        print(written)
    if against is not None:
        print("\n".join(comparison_section(result, against, args.against)))
    return 0


def _read_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON result ({e})") from e
    if not isinstance(result, dict) or not isinstance(result.get("methods"), dict):
        raise ValueError(f"{path}: not an evaluate or replay result (no 'methods' object)")
    return result
