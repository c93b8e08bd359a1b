"""Switch BatchNorm layers between running statistics and test-batch statistics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block every BatchNorm normalises with the current batch's mean/var and leaves
    its running buffers untouched (they are neither used nor updated)."""
    saved = [(bn, bn.training, bn.track_running_stats) for bn in batchnorms(model)]
    try:
        for bn, _, _ in saved:
            bn.train(True)
            bn.track_running_stats = False
        yield
    finally:
        for bn, training, track in saved:
            bn.train(training)
            bn.track_running_stats = track
