"""Top-k predictions with labels: the result type every front end prints or publishes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ClassScore:
    class_index: int
    label: str
    score: float


def top_k(logits: torch.Tensor, labels: list[str], k: int = 5) -> list[list[ClassScore]]:
    """Softmax top-``k`` per row of ``logits`` (B x classes)."""
    probs = logits.detach().float().softmax(dim=-1)
    scores, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[ClassScore(int(i), labels[int(i)], float(s)) for s, i in zip(row_s, row_i)]
            for row_s, row_i in zip(scores, indices)]


def as_dicts(results: list[ClassScore]) -> list[dict]:
    return [asdict(r) for r in results]


def entropy(logits: torch.Tensor) -> list[float]:
    """Shannon entropy (nats) of the softmax of each row of ``logits`` (B x classes)."""
    logp = logits.detach().float().log_softmax(dim=-1)
    return (-(logp.exp() * logp).sum(dim=-1)).tolist()
