"""Newest-frame slots: one per camera, so a slow model never works through a stale queue.

Subscription callbacks :meth:`FrameSlots.put` each arriving message into its camera's slot,
replacing (and counting as dropped) a frame the inference thread has not taken yet. The
inference thread :meth:`FrameSlots.take` s the waiting frame that arrived first across cameras
(fair between cameras; each camera contributes only its newest frame). No rclpy here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pending:
    """A frame waiting in a slot."""

    camera: str
    message: Any
    kind: str              # "raw" or "compressed"
    received: float        # time.monotonic() at arrival


@dataclass
class SlotCounters:
    received: int = 0      # frames put into the slot
    dropped: int = 0       # frames overwritten before the inference thread took them
    taken: int = 0         # frames handed to the inference thread


@dataclass
class FrameSlots:
    """Thread-safe newest-frame slots for a fixed set of cameras."""

    cameras: tuple[str, ...]
    _slots: dict[str, Pending | None] = field(init=False)
    _counters: dict[str, SlotCounters] = field(init=False)
    _cond: threading.Condition = field(init=False, default_factory=threading.Condition)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        self._slots = {c: None for c in self.cameras}
        self._counters = {c: SlotCounters() for c in self.cameras}

    def put(self, camera: str, message: Any, kind: str = "raw") -> bool:
        """Store ``message`` as ``camera``'s newest frame; True if it replaced an untaken one."""
        with self._cond:
            counters = self._counters[camera]
            counters.received += 1
            replaced = self._slots[camera] is not None
            if replaced:
                counters.dropped += 1
            self._slots[camera] = Pending(camera, message, kind, time.monotonic())
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Pending | None:
        """The waiting frame that arrived first (across cameras), or None after ``timeout``
        seconds or once :meth:`close` was called."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                waiting = [p for p in self._slots.values() if p is not None]
                if waiting:
                    first = min(waiting, key=lambda p: p.received)
                    self._slots[first.camera] = None
                    self._counters[first.camera].taken += 1
                    return first
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def counters(self) -> dict[str, SlotCounters]:
        """A snapshot of every camera's counters."""
        with self._cond:
            return {c: SlotCounters(k.received, k.dropped, k.taken)
                    for c, k in self._counters.items()}

    def clear(self) -> int:
        """Forget waiting frames (not counted as dropped); returns how many were waiting."""
        with self._cond:
            waiting = sum(p is not None for p in self._slots.values())
            self._slots = {c: None for c in self.cameras}
            return waiting

    def close(self) -> None:
        """Wake every waiting :meth:`take` (which then returns None) and refuse to wait again."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
