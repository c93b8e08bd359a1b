"""The order in which a domain's images reach the camera: shuffled, or correlated as a camera
sees them.

A robot's camera does not see an i.i.d. shuffle of the world: objects of a kind come together
and every scene stays in view for many frames. Three orders, each a seeded permutation of one
domain's images for one pass over them (``pass_`` is 1-based; pass ``r`` of a domain is what
round ``r`` of ``zoa-ros evaluate`` shows):

* ``iid`` - a uniform permutation (:func:`order`; the benchmark protocol).
* ``class-sorted`` - sorted by class index, so related ImageNet classes (dog breeds, birds,
  vehicles) come one after another; images of one class keep the iid order among themselves,
  and the sequence starts at a seeded position (cyclically), so every domain and pass does not
  start with class 0.
* ``dirichlet:D`` - the label-Dirichlet sequence of the practical test-time adaptation
  literature (NOTE, Gong et al., NeurIPS 2022; RoTTA, Yuan et al., CVPR 2023): the stream is cut
  into ``min(classes, 100)`` slots, each class's images are spread over the slots by a
  Dirichlet(D) draw, and the slots are played in order, the classes within a slot in a random
  order. D = 0.1 is strongly correlated (a class's images fall in one or two slots), large D
  approaches iid. With one image per class every class lands in one slot and the order is close
  to iid: correlation then has to come from holding each image (``dwell``).

Holding each image for ``dwell`` consecutive frames (a camera at 15 Hz looking at one scene for a
quarter of a second) is applied by the stream, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoa_ros.core.data.corruptions import derive_seed

IID = "iid"
CLASS_SORTED = "class-sorted"
DIRICHLET = "dirichlet"
KINDS = (IID, CLASS_SORTED, DIRICHLET)
MAX_SLOTS = 100


def order(count: int, seed: int, name: str, round_: int, same_order: bool = False) -> list[int]:
    """The iid frame order of domain ``name`` in round ``round_``: a seeded permutation
    (``same_order``: round 1's in every round)."""
    key = 1 if same_order else round_
    return np.random.default_rng(derive_seed(seed, f"order/{name}", key)).permutation(count) \
        .tolist()


@dataclass(frozen=True)
class StreamOrder:
    """One of :data:`KINDS`; ``concentration`` is Dirichlet's D."""

    kind: str = IID
    concentration: float | None = None

    @classmethod
    def parse(cls, text: str) -> StreamOrder:
        """``iid``, ``class-sorted`` or ``dirichlet:D`` (D > 0); a clear error otherwise."""
        kind, sep, value = text.strip().partition(":")
        if kind == DIRICHLET:
            try:
                d = float(value)
            except ValueError:
                d = -1.0
            if not sep or not d > 0 or not np.isfinite(d):
                raise ValueError(f"order {text!r}: expected dirichlet:D with D > 0, e.g. "
                                 "dirichlet:0.1")
            return cls(DIRICHLET, d)
        if kind in (IID, CLASS_SORTED) and not sep:
            return cls(kind)
        raise ValueError(f"unknown order {text!r}; expected iid, class-sorted or dirichlet:D")

    def __str__(self) -> str:
        return f"{DIRICHLET}:{self.concentration:g}" if self.kind == DIRICHLET else self.kind

    @property
    def needs_labels(self) -> bool:
        return self.kind != IID

    def permutation(self, labels: Sequence[int] | None, count: int, seed: int, name: str,
                    pass_: int, same_order: bool = False) -> list[int]:
        """Pass ``pass_`` of domain ``name`` over ``count`` images of class ``labels``."""
        base = order(count, seed, name, pass_, same_order)
        if self.kind == IID:
            return base
        if labels is None or len(labels) != count:
            raise ValueError(f"order {self} needs the class of every image")
        key = 1 if same_order else pass_
        rng = np.random.default_rng(derive_seed(seed, f"{self.kind}/{name}", key))
        if self.kind == CLASS_SORTED:
            ranked = sorted(base, key=lambda i: labels[i])   # stable: iid order within a class
            start = int(rng.integers(count))
            return ranked[start:] + ranked[:start]
        return _dirichlet(base, labels, float(self.concentration), rng)


def _dirichlet(base: list[int], labels: Sequence[int], concentration: float,
               rng: np.random.Generator) -> list[int]:
    """RoTTA's label-Dirichlet sequence over the images ``base`` (in their iid order)."""
    classes = sorted({labels[i] for i in base})
    slots: list[list[list[int]]] = [[] for _ in range(min(len(classes), MAX_SLOTS))]
    shares = rng.dirichlet([concentration] * len(slots), len(classes))
    for cls, share in zip(classes, shares):
        members = [i for i in base if labels[i] == cls]
        cuts = np.rint(np.cumsum(share)[:-1] * len(members)).astype(int)   # RoTTA truncates:
        # a share of 0.99999 would leave the last image of a class alone in the last slot
        for slot, part in zip(slots, np.split(np.asarray(members, dtype=int), cuts)):
            if len(part):
                slot.append(part.tolist())
    out: list[int] = []
    for slot in slots:
        for j in rng.permutation(len(slot)):
            out += slot[j]
    return out
