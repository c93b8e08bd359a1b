"""In what order a fleet run replays its recordings, and with which knowledge bank.

Every recording is one task. Without ``carry_bank`` the tasks are independent and all start
from their phase's bank (an empty one, or the fleet bank in the hold-out pass). With it, each
robot's missions form a chain in mission order (:func:`~.manifest.mission_order`): mission
``k + 1`` starts once mission ``k`` is finished, from the bank mission ``k`` ended with. Robots
are independent of each other, so their chains run in parallel.

A mission that failed (both attempts) or ended without a bank does not stop its robot: the next
mission starts from the last bank that chain produced (the chain's starting bank if none), and
:class:`Ready` says which mission that bank came from, so the report can say so.

``--holdout-split S`` takes the recordings whose manifest ``split`` is ``S`` out of the chains
(:func:`split_holdout`); they are replayed in a second pass, once from the merged fleet bank and
once from an empty bank (:data:`HOLDOUT_PHASES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zoa_ros.core.eval.fleet.manifest import FleetBag, mission_order

MISSIONS = "missions"
HOLDOUT_FLEET = "holdout-fleet-bank"
HOLDOUT_EMPTY = "holdout-empty-bank"
HOLDOUT_PHASES = (HOLDOUT_FLEET, HOLDOUT_EMPTY)


@dataclass(frozen=True)
class Task:
    """One replay of one recording in one phase; ``start_bank``: the bank file a chain's first
    task loads (``None``: an empty bank)."""

    bag: FleetBag
    phase: str = MISSIONS
    start_bank: str | None = None

    @property
    def name(self) -> str:
        return self.bag.name if self.phase == MISSIONS else f"{self.bag.name} [{self.phase}]"


@dataclass(frozen=True)
class Ready:
    """A task that may start now, the bank it loads (``None``: empty) and, inside a chain, the
    earlier task that produced that bank."""

    task: Task
    bank: str | None
    bank_from: Task | None = None


def split_holdout(bags: Sequence[FleetBag], split: str | None
                  ) -> tuple[list[FleetBag], list[FleetBag]]:
    """``(missions, held_out)``: the bags whose split is not / is ``split``."""
    if split is None:
        return list(bags), []
    held = [b for b in bags if b.split == split]
    if not held:
        splits = sorted({b.split for b in bags if b.split})
        raise ValueError(f"no bag has split {split!r} (the manifest's splits: "
                         f"{', '.join(splits) or 'none; add a split column'})")
    if len(held) == len(bags):
        raise ValueError(f"every bag has split {split!r}: nothing is left to build the fleet "
                         "bank from")
    return [b for b in bags if b.split != split], held


def chains(bags: Sequence[FleetBag], carry_bank: bool, phase: str = MISSIONS,
           start_bank: str | None = None) -> list[list[Task]]:
    """One chain per robot in mission order (robots in order of first appearance) with
    ``carry_bank``; otherwise one single-task chain per bag, in the order given."""
    if not carry_bank:
        return [[Task(b, phase, start_bank)] for b in bags]
    robots: dict[str, list[FleetBag]] = {}
    for bag in bags:
        robots.setdefault(bag.robot, []).append(bag)
    return [[Task(b, phase, start_bank) for b in sorted(group,
                                                        key=lambda b: mission_order(b.mission))]
            for group in robots.values()]


class ChainSchedule:
    """Hands out the tasks of ``chains`` as their input bank becomes known: every chain's first
    task at once, each later one when the one before it has :meth:`finished`."""

    def __init__(self, chains: Sequence[Sequence[Task]]) -> None:
        self._chains = [list(c) for c in chains if c]
        self._next = [0] * len(self._chains)
        self._bank: list[tuple[str | None, Task | None]] = \
            [(c[0].start_bank, None) for c in self._chains]
        self._running: dict[Task, int] = {}
        self._handed = [False] * len(self._chains)

    def ready(self) -> list[Ready]:
        """The tasks that may start now (each is handed out once)."""
        out = []
        for i, chain in enumerate(self._chains):
            if self._handed[i] or self._next[i] >= len(chain):
                continue
            task = chain[self._next[i]]
            bank, source = self._bank[i]
            out.append(Ready(task, bank, source))
            self._running[task] = i
            self._handed[i] = True
        return out

    def finished(self, task: Task, bank: str | None) -> None:
        """``task`` is done; ``bank``: the bank file it ended with (``None``: it failed or has
        none, and its chain goes on from the bank it had)."""
        i = self._running.pop(task)
        if bank is not None:
            self._bank[i] = (bank, task)
        self._next[i] += 1
        self._handed[i] = False

    @property
    def done(self) -> bool:
        return not self._running and all(n >= len(c) for n, c in zip(self._next, self._chains))

