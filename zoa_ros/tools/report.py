"""Markdown table and accuracy plot of an evaluation result (``evaluation.evaluate`` output)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from zoa_ros.core.atomic import atomic_write_bytes


def write_report(result: dict, folder: str | Path) -> list[Path]:
    """Write ``report.md`` and ``accuracy.png`` into ``folder``; returns their paths."""
    folder = Path(folder)
    md, png = folder / "report.md", folder / "accuracy.png"
    atomic_write_bytes(md, markdown(result).encode())
    atomic_write_bytes(png, accuracy_plot(result))
    return [md, png]


def markdown(result: dict) -> str:
    methods = list(result["methods"])
    runs = result["methods"]
    config = result.get("config", {})
    lines = ["# zoa-ros evaluate", ""]
    pack = config.get("pack_info", {})
    if pack:
        lines += [f"- pack: `{config.get('pack')}` — {pack.get('model')} {pack.get('quant')}, "
                  f"fingerprint `{str(pack.get('fingerprint', ''))[:12]}`"]
    for key in ("mode", "batch_size", "seed", "layout", "severity", "rounds", "limit"):
        if key in config:
            lines.append(f"- {key}: {config[key]}")
    run = result.get("run", {})
    if run:
        lines.append(f"- {run['frames']} frames per method, {run['wall_s']:.1f} s wall "
                     f"({run['frames_per_s']:.1f} frames/s, all methods), device "
                     f"{run['device']}, {run['torch_threads']} torch threads")
    lines += ["", "## Top-1 accuracy (%) per domain", "",
              _row(["round", "domain", "frames", *methods]),
              _row(["---:", "---", "---:", *["---:"] * len(methods)])]
    for i, d in enumerate(runs[methods[0]]["domains"]):
        lines.append(_row([d["round"], d["name"], d["frames"],
                           *[f"{runs[m]['domains'][i]['acc']:.2f}" for m in methods]]))
    lines += ["", "## Mean accuracy (%) per round", "", _row(["round", *methods]),
              _row(["---:", *["---:"] * len(methods)])]
    for i, r in enumerate(runs[methods[0]]["rounds"]):
        lines.append(_row([r["round"], *[f"{runs[m]['rounds'][i]['mean_acc']:.2f}"
                                         for m in methods]]))
    lines.append(_row(["**all**", *[f"**{runs[m]['mean_acc']:.2f}**" for m in methods]]))
    lines += ["", "## Costs", "",
              _row(["method", "fwd/frame", "bwd/frame", "ms/frame", "peak MB", "state MB",
                    "adapt steps", "domain changes", "bank entries", "bank KB"]),
              _row(["---", *["---:"] * 9])]
    for m in methods:
        c = runs[m]["costs"]
        lines.append(_row([m, f"{c['forward_per_frame']:.3f}", f"{c['backward_per_frame']:.3f}",
                           f"{c['ms_per_frame']:.2f}", f"{c['peak_mb']:.1f}",
                           f"{c['state_mb']:.1f}", c["adapt_steps"], runs[m]["domain_changes"],
                           runs[m]["bank"]["entries"], f"{runs[m]['bank']['bytes'] / 1024:.1f}"]))
    notes = run.get("notes", {})
    if notes:
        lines += ["", "## What the numbers mean", ""]
        lines += [f"- **{k}**: {v}" for k, v in notes.items()]
    return "\n".join(lines) + "\n"


def accuracy_plot(result: dict) -> bytes:
    """PNG: per-batch accuracy along the stream (a centred moving average that never crosses a
    domain boundary) and each domain's accuracy as a dashed step, one colour per method, with a
    vertical line at every domain boundary."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    segments = result["stream"]
    edges = np.cumsum([0] + [s["frames"] for s in segments])
    fig = Figure(figsize=(max(8.0, min(0.35 * len(segments), 24.0)), 4.5), dpi=120)
    ax = fig.add_subplot()
    chunks = len(next(iter(result["methods"].values()))["curve"]["acc"])
    window = max(1, min(9, chunks // max(len(segments), 1) // 3) | 1)  # odd
    for (name, run), colour in zip(result["methods"].items(), _colours()):
        ends = np.asarray(run["curve"]["frames"])
        starts = np.concatenate([[0], ends[:-1]])
        acc = np.asarray(run["curve"]["acc"], dtype=float)
        label = f"{name} (mean {run['mean_acc']:.1f} %)"
        for i, domain in enumerate(run["domains"]):
            inside = (ends > edges[i]) & (ends <= edges[i + 1])
            if inside.any():
                ax.plot((starts[inside] + ends[inside]) / 2, _smooth(acc[inside], window),
                        color=colour, linewidth=1.2, label=label if i == 0 else None)
            ax.plot(edges[i:i + 2], [domain["acc"]] * 2, color=colour, linewidth=1.0,
                    linestyle="--", alpha=0.6)
    for i, edge in enumerate(edges):
        ax.axvline(edge, color="grey", linewidth=0.5, alpha=0.6)
        if i < len(segments) and len(segments) <= 60:
            ax.text(edge, 1.01, segments[i]["name"], rotation=90, fontsize=6, va="bottom",
                    transform=ax.get_xaxis_transform())
    ax.set_xlim(0, max(int(edges[-1]), 1))
    ax.set_ylim(0, 100)
    ax.set_xlabel("frames in stream")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(loc="lower right", fontsize=7, title_fontsize=7, framealpha=0.8,
              title=("per batch" if window == 1 else f"per batch, moving average of {window}")
              + "; dashed: domain accuracy")
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
