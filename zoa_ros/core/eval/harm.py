"""The harm table: what adapting costs or gains against not adapting, on the same frames.

Per method and domain (segment): its accuracy minus the reference method's (``none``, the
unadapted model) on the same frames, over the whole segment and over its first ``HEAD_FRAMES``
frames (right after a change, where adaptation lags); the mean over domains, the worst domain,
and the clean segments called out (a robot spends most of its life near its training data:
adaptation must not cost accuracy there). Computed from an evaluation result's per-domain
rows, so ``zoa-ros report`` renders it for any saved result.
"""

from __future__ import annotations

from zoa_ros.core.data.corruptions import CLEAN

REFERENCE = "none"
HEAD_FRAMES = 64


def is_clean(name: str) -> bool:
    return name == CLEAN


def harm_table(result: dict, reference: str = REFERENCE) -> dict | None:
    """``{"reference", "head_frames", "methods": {name: {...}}}`` for every method but the
    reference; ``None`` when the reference did not run or the stream has no labels."""
    methods = result.get("methods", {})
    if reference not in methods or not result.get("labelled", True):
        return None
    ref = methods[reference]["domains"]
    out = {}
    for name, run in methods.items():
        if name == reference:
            continue
        rows = [_row(d, r) for d, r in zip(run["domains"], ref, strict=True)]
        if any(r["diff"] is None for r in rows):
            continue
        out[name] = {"domains": rows, **_summary(rows)}
    return {"reference": reference, "head_frames": HEAD_FRAMES, "methods": out}


def _row(domain: dict, ref: dict) -> dict:
    acc, ref_acc = domain.get("acc"), ref.get("acc")
    head, ref_head = domain.get("acc_head"), ref.get("acc_head")
    return {"name": domain["name"], "round": domain["round"], "frames": domain["frames"],
            "clean": is_clean(domain["name"]), "acc": acc, "reference_acc": ref_acc,
            "diff": None if acc is None or ref_acc is None else acc - ref_acc,
            "diff_head": None if head is None or ref_head is None else head - ref_head,
            "adapting": domain.get("adapting")}


def _summary(rows: list[dict]) -> dict:
    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    worst = min(rows, key=lambda r: r["diff"])
    clean = [r["diff"] for r in rows if r["clean"]]
    shifted = [r["diff"] for r in rows if not r["clean"]]
    heads = [r["diff_head"] for r in rows if r["diff_head"] is not None]
    return {"mean_diff": mean([r["diff"] for r in rows]),
            "mean_diff_head": mean(heads),
            "worst": {"name": worst["name"], "round": worst["round"], "diff": worst["diff"]},
            "clean_segments": len(clean), "clean_worst_diff": min(clean, default=None),
            "clean_mean_diff": mean(clean),
            "shifted_worst_diff": min(shifted, default=None),
            "shifted_mean_diff": mean(shifted)}
