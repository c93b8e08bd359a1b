"""Peak tensor memory of a block of code: what one inference or adaptation step allocates.

Process RSS is the wrong yardstick for a method's cost: it is process-wide, monotonic, and the
allocator keeps freed pages. What a method costs is the peak of the tensor memory it allocates
while it runs (activations, perturbations, temporaries), on top of what already existed
(parameters, the input batch, the knowledge bank).

* CUDA: ``torch.cuda.max_memory_allocated`` relative to the allocation before the block (exact).
* CPU: a ``TorchDispatchMode`` sees every tensor an operator returns; a storage counts from the
  first operator that returns it until the last Python tensor using it dies. Views and in-place
  results of tensors that existed before the block are not counted. It slows operators down a
  little, so sample it (a step now and then), do not leave it on.
"""

from __future__ import annotations

import weakref
from types import TracebackType

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 1024.0 * 1024.0


class PeakTensorMemory:
    """``with PeakTensorMemory(device) as m: ...`` then ``m.peak_bytes``."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._base = 0
        self._mode: _StorageTracker | None = None

    def __enter__(self) -> PeakTensorMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = _StorageTracker()
            self._mode.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._mode is not None:
            self._mode.__exit__(kind, value, traceback)
            self.peak_bytes = self._mode.peak
            self._mode = None
        else:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MIB


class _StorageTracker(TorchDispatchMode):
    """Live bytes of the storages created under the mode, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # data_ptr -> [nbytes, python tensors alive]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_ptr(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            ptr = _ptr(t)
            if ptr == 0 or (ptr in inputs and ptr not in self.live):
                continue  # empty, or a view / in-place result of a tensor from before the block
            entry = self.live.get(ptr)
            if entry is None:
                nbytes = t.untyped_storage().nbytes()
                entry = self.live[ptr] = [nbytes, 0]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.current -= entry[0]
            del self.live[ptr]


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen[_ptr(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())
