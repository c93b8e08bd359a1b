"""Labelled frame streams for continual evaluation: a sequence of domain segments.

A :class:`FrameStream` yields :class:`Segment` s - the frames of one visit to one domain, in
stream order, with their labels. The evaluator only needs that, so the same evaluation runs over
corrupted image folders (:class:`CorruptionStream`), ImageNet-C trees (:class:`ImageNetCStream`)
or, later, rosbag recordings.

Determinism: which images a ``limit`` keeps, the frame order of each (round, domain) and each
image's corruption all come from :func:`~zoa_ros.core.data.corruptions.derive_seed` of the one seed,
so the same arguments give the same frames on any machine, with any number of workers. An
image's corruption does not depend on the round (ImageNet-C replays the same files every round);
the order does, unless ``same_order`` (every round replays round 1's order).

No torch here: corruption worker processes import only numpy, PIL and the corruption code.
"""

from __future__ import annotations

import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoa_ros.core.data.corruptions import corrupt, derive_seed
from zoa_ros.core.data.domain_schedule import ScheduledFrame, Visit, scheduled_frames
from zoa_ros.core.data.stream_order import StreamOrder
from zoa_ros.core.files.images import find_images, read_rgb

Crop = Callable[[np.ndarray], np.ndarray]


@dataclass
class Segment:
    """One visit to one domain: uint8 HxWx3 frames in stream order and their class indices
    (``None`` for an unlabelled recording)."""

    name: str
    round: int                  # 1-based
    frames: list[np.ndarray]
    labels: list[int] | None
    at_input_size: bool = True  # frames are the model's center crops already (normalize only)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    round: int
    frames: int


class FrameStream(ABC):
    """An iterable of :class:`Segment` whose layout is known before it is read."""

    @abstractmethod
    def plan(self) -> list[SegmentInfo]:
        """The segments this stream will yield, in order."""

    @abstractmethod
    def __iter__(self) -> Iterator[Segment]: ...

    def describe(self) -> dict:
        """What the stream is, for the report's config section."""
        return {"kind": type(self).__name__}

    @property
    def total_frames(self) -> int:
        return sum(s.frames for s in self.plan())


def subset(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of the images a ``limit`` keeps, ascending: the first ``limit`` of a seeded
    permutation (the same for every domain and round), or all of them."""
    if limit is None or limit >= count:
        return list(range(count))
    rng = np.random.default_rng(derive_seed(seed, "subset", count))
    return sorted(rng.permutation(count)[:limit].tolist())


def load_crops(paths: Sequence[Path], crop: Crop, threads: int | None = None
               ) -> list[np.ndarray]:
    """Decode and crop every image once (threads: PIL releases the GIL while decoding)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda p: crop(read_rgb(p)), paths))


# ---- corruptions computed on the fly ---------------------------------------------------------

_WORKER_CROPS: list[np.ndarray] = []


def _init_worker(crops: list[np.ndarray]) -> None:
    global _WORKER_CROPS
    _WORKER_CROPS = crops


def _corrupt_chunk(positions: list[int], name: str, severity: int, seeds: list[int]
                   ) -> list[np.ndarray]:
    return [corrupt(_WORKER_CROPS[p], name, severity, seed) for p, seed in zip(positions, seeds)]


def _worker_context() -> multiprocessing.context.BaseContext:
    """``fork`` where it exists (as torch's DataLoader: the crops are inherited, not pickled,
    and the caller's ``__main__`` is not re-run, so scripts need no main guard); the workers
    only run numpy/scipy code. ``spawn`` elsewhere."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class CorruptionStream(FrameStream):
    """Visits of corrupted domains over one set of crops, corrupted on the fly.

    The visits are ``rounds`` x ``corruptions``, each a pass over the crops with every image held
    for ``dwell`` frames, or an explicit schedule (``visits``,
    :mod:`~zoa_ros.core.data.domain_schedule`: its own length and severity per visit); the
    frames of a pass follow ``stream_order`` (:mod:`~zoa_ros.core.data.stream_order`).
    ``ids[i]`` is crop ``i``'s stable image index (its position in the full sorted file list),
    which seeds its corruption: ``derive_seed(seed, name, ids[i])``. With ``workers >= 1`` the
    corruptions run in that many processes and the next visit is computed while the current
    one is consumed; with 0 they run here, when the visit is reached. A held image is corrupted
    once (its frames are the same array). Domains visited more than once are kept for later
    visits while they fit in ``cache_bytes``.
    """

    def __init__(self, crops: Sequence[np.ndarray], labels: Sequence[int], ids: Sequence[int],
                 corruptions: Sequence[str] = (), *, severity: int = 5, rounds: int = 1,
                 seed: int = 0, workers: int = 0, cache_bytes: int = 2 << 30,
                 same_order: bool = False, visits: Sequence[Visit] | None = None,
                 stream_order: StreamOrder | None = None, dwell: int = 1) -> None:
        if not (len(crops) == len(labels) == len(ids)) or not crops:
            raise ValueError("crops, labels and ids must be non-empty and of equal length")
        if dwell < 1:
            raise ValueError(f"dwell must be >= 1, got {dwell}")
        if visits is None:
            if rounds < 1 or not corruptions:
                raise ValueError("need at least one round and one corruption")
            visits = [Visit(name, len(crops) * dwell) for _ in range(rounds)
                      for name in corruptions]
        elif not visits:
            raise ValueError("need at least one visit")
        self.crops = list(crops)
        self.labels = [int(c) for c in labels]
        self.ids = [int(i) for i in ids]
        self.visits = list(visits)
        self.corruptions = list(corruptions) or list(dict.fromkeys(v.name for v in visits))
        self.severity, self.rounds, self.seed, self.workers = severity, rounds, seed, workers
        self.same_order, self.dwell = same_order, dwell
        self.stream_order = stream_order or StreamOrder()
        names = [v.name for v in self.visits]
        repeated = {n for n in names if names.count(n) > 1}
        domain_bytes = sum(c.nbytes for c in self.crops)
        self._cached = repeated if domain_bytes * len(repeated) <= cache_bytes else set()

    def plan(self) -> list[SegmentInfo]:
        rounds: dict[str, int] = {}
        out = []
        for v in self.visits:
            rounds[v.name] = rounds.get(v.name, 0) + 1
            out.append(SegmentInfo(v.name, rounds[v.name], v.frames))
        return out

    def describe(self) -> dict:
        return {"kind": "corrupted-folder", "images": len(self.crops),
                "corruptions": self.corruptions, "severity": self.severity,
                "rounds": self.rounds, "seed": self.seed, "workers": self.workers,
                "same_order": self.same_order, "order": str(self.stream_order),
                "dwell": self.dwell,
                "schedule": ",".join(f"{v.name}:{v.frames}" for v in self.visits)}

    def _frames(self) -> list[list[ScheduledFrame]]:
        """Each visit's scheduled frames."""
        frames = iter(scheduled_frames(self.visits, len(self.crops), self.seed,
                                       labels=self.labels, ids=self.ids,
                                       stream_order=self.stream_order, dwell=self.dwell,
                                       same_order=self.same_order))
        return [[next(frames) for _ in range(v.frames)] for v in self.visits]

    def __iter__(self) -> Iterator[Segment]:
        pool = None
        if self.workers > 0:
            pool = ProcessPoolExecutor(self.workers, _worker_context(), initializer=_init_worker,
                                       initargs=(self.crops,))
        cache: dict[str, dict[int, np.ndarray]] = {}
        try:
            plan, visits = self.plan(), self._frames()
            pending = self._start(visits[0], pool, cache)
            for i, (info, frames) in enumerate(zip(plan, visits)):
                images = self._finish(frames, pending, cache)
                if i + 1 < len(plan):
                    pending = self._start(visits[i + 1], pool, cache)
                yield Segment(info.name, info.round, [images[f.image] for f in frames],
                              [self.labels[f.image] for f in frames])
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _todo(self, frames: list[ScheduledFrame], cache: dict[str, dict[int, np.ndarray]]
              ) -> tuple[list[int], str, int, list[int]]:
        """The images of ``frames`` not yet corrupted (once each), the corruption, severity and
        seeds."""
        first, done = frames[0], cache.get(frames[0].name, {})
        todo = list(dict.fromkeys(f.image for f in frames if f.image not in done))
        seeds = {f.image: f.seed for f in frames}
        severity = self.severity if first.severity is None else first.severity
        return todo, first.domain, severity, [seeds[i] for i in todo]

    def _start(self, frames: list[ScheduledFrame], pool: ProcessPoolExecutor | None,
               cache: dict[str, dict[int, np.ndarray]]) -> list[Future] | None:
        todo, name, severity, seeds = self._todo(frames, cache)
        if pool is None or not todo:
            return None
        n = len(todo)
        size = max(1, -(-n // (self.workers * 4)))
        return [pool.submit(_corrupt_chunk, todo[a:a + size], name, severity, seeds[a:a + size])
                for a in range(0, n, size)]

    def _finish(self, frames: list[ScheduledFrame], pending: list[Future] | None,
                cache: dict[str, dict[int, np.ndarray]]) -> dict[int, np.ndarray]:
        todo, name, severity, seeds = self._todo(frames, cache)
        if pending is not None:
            corrupted = [frame for f in pending for frame in f.result()]
        else:
            corrupted = [corrupt(self.crops[i], name, severity, s) for i, s in zip(todo, seeds)]
        images = {**cache.get(frames[0].name, {}), **dict(zip(todo, corrupted))}
        if frames[0].name in self._cached:
            cache[frames[0].name] = images
        return images


# ---- ImageNet-C files --------------------------------------------------------------------------

class ImageNetCStream(FrameStream):
    """``root/<corruption>/<severity>/<wnid>/*`` trees, one segment per (round, corruption).

    Images already at the model's input size are used as they are (ImageNet-C ships 224x224
    crops); others go through ``crop``. Labels come from the wnid folders, or ``wnid_index``.
    Each pass follows ``stream_order``, every image held for ``dwell`` frames.
    """

    def __init__(self, root: str | Path, corruptions: Sequence[str], crop: Crop,
                 input_hw: tuple[int, int], *, severity: int = 5, rounds: int = 1,
                 seed: int = 0, limit: int | None = None,
                 wnid_index: Callable[[str], int] | None = None, same_order: bool = False,
                 stream_order: StreamOrder | None = None, dwell: int = 1) -> None:
        if dwell < 1:
            raise ValueError(f"dwell must be >= 1, got {dwell}")
        if wnid_index is None:
            from zoa_ros.core.model.labels import wnid_to_index as wnid_index  # imports timm
        self.root = Path(root)
        self.corruptions, self.crop, self.input_hw = list(corruptions), crop, tuple(input_hw)
        self.severity, self.rounds, self.seed, self.limit = severity, rounds, seed, limit
        self.same_order, self.dwell = same_order, dwell
        self.stream_order = stream_order or StreamOrder()
        self.files: dict[str, list[tuple[Path, int]]] = {}
        for name in self.corruptions:
            folder = self.root / name / str(severity)
            paths = find_images(folder)
            try:
                pairs = [(p, wnid_index(p.parent.name)) for p in paths]
            except KeyError as e:
                raise ValueError(f"{folder}: expected <wnid>/ sub-folders ({e})") from e
            self.files[name] = [pairs[i] for i in subset(len(pairs), limit, seed)]

    def plan(self) -> list[SegmentInfo]:
        return [SegmentInfo(name, r, len(self.files[name]) * self.dwell)
                for r in range(1, self.rounds + 1) for name in self.corruptions]

    def describe(self) -> dict:
        return {"kind": "imagenet-c", "root": str(self.root), "corruptions": self.corruptions,
                "severity": self.severity, "rounds": self.rounds, "seed": self.seed,
                "limit": self.limit, "same_order": self.same_order,
                "order": str(self.stream_order), "dwell": self.dwell}

    def _fit(self, image: np.ndarray) -> np.ndarray:
        return image if image.shape[:2] == self.input_hw else self.crop(image)

    def __iter__(self) -> Iterator[Segment]:
        for info in self.plan():
            pairs = self.files[info.name]
            seq = self.stream_order.permutation([c for _, c in pairs], len(pairs), self.seed,
                                                info.name, info.round, self.same_order)
            frames = load_crops([pairs[j][0] for j in seq], self._fit)
            k = self.dwell
            yield Segment(info.name, info.round, [f for f in frames for _ in range(k)],
                          [pairs[j][1] for j in seq for _ in range(k)])
