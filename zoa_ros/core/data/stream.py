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


def order(count: int, seed: int, name: str, round_: int, same_order: bool = False) -> list[int]:
    """The frame order of domain ``name`` in round ``round_``: a seeded permutation
    (``same_order``: round 1's in every round)."""
    key = 1 if same_order else round_
    return np.random.default_rng(derive_seed(seed, f"order/{name}", key)).permutation(count) \
        .tolist()


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
    """``rounds`` x ``corruptions`` segments over one set of crops, corrupted on the fly.

    ``ids[i]`` is crop ``i``'s stable image index (its position in the full sorted file list),
    which seeds its corruption: ``derive_seed(seed, name, ids[i])``. With ``workers >= 1`` the
    corruptions run in that many processes and the next segment is computed while the current
    one is consumed; with 0 they run here, when the segment is reached. Corrupted domains are
    kept for later rounds while they fit in ``cache_bytes``.
    """

    def __init__(self, crops: Sequence[np.ndarray], labels: Sequence[int], ids: Sequence[int],
                 corruptions: Sequence[str], *, severity: int = 5, rounds: int = 1,
                 seed: int = 0, workers: int = 0, cache_bytes: int = 2 << 30,
                 same_order: bool = False) -> None:
        if not (len(crops) == len(labels) == len(ids)) or not crops:
            raise ValueError("crops, labels and ids must be non-empty and of equal length")
        if rounds < 1 or not corruptions:
            raise ValueError("need at least one round and one corruption")
        self.crops = list(crops)
        self.labels = [int(c) for c in labels]
        self.ids = [int(i) for i in ids]
        self.corruptions = list(corruptions)
        self.severity, self.rounds, self.seed, self.workers = severity, rounds, seed, workers
        self.same_order = same_order
        domain_bytes = sum(c.nbytes for c in self.crops)
        self._cache_ok = rounds > 1 and domain_bytes * len(set(corruptions)) <= cache_bytes

    def plan(self) -> list[SegmentInfo]:
        return [SegmentInfo(name, r, len(self.crops))
                for r in range(1, self.rounds + 1) for name in self.corruptions]

    def describe(self) -> dict:
        return {"kind": "corrupted-folder", "images": len(self.crops),
                "corruptions": self.corruptions, "severity": self.severity,
                "rounds": self.rounds, "seed": self.seed, "workers": self.workers,
                "same_order": self.same_order}

    def __iter__(self) -> Iterator[Segment]:
        pool = None
        if self.workers > 0:
            pool = ProcessPoolExecutor(self.workers, _worker_context(), initializer=_init_worker,
                                       initargs=(self.crops,))
        cache: dict[str, list[np.ndarray]] = {}
        try:
            plan = self.plan()
            pending = self._start(plan[0].name, pool, cache)
            for i, info in enumerate(plan):
                domain = self._finish(info.name, pending, cache)
                if i + 1 < len(plan):
                    pending = self._start(plan[i + 1].name, pool, cache)
                seq = order(len(domain), self.seed, info.name, info.round, self.same_order)
                yield Segment(info.name, info.round, [domain[j] for j in seq],
                              [self.labels[j] for j in seq])
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _seeds(self, name: str) -> list[int]:
        return [derive_seed(self.seed, name, i) for i in self.ids]

    def _start(self, name: str, pool: ProcessPoolExecutor | None,
               cache: dict[str, list[np.ndarray]]) -> list[Future] | None:
        if name in cache or pool is None:
            return None
        seeds, n = self._seeds(name), len(self.crops)
        size = max(1, -(-n // (self.workers * 4)))
        return [pool.submit(_corrupt_chunk, list(range(a, min(a + size, n))), name,
                            self.severity, seeds[a:a + size]) for a in range(0, n, size)]

    def _finish(self, name: str, pending: list[Future] | None,
                cache: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
        if name in cache:
            return cache[name]
        if pending is not None:
            domain = [frame for f in pending for frame in f.result()]
        else:
            domain = [corrupt(c, name, self.severity, s)
                      for c, s in zip(self.crops, self._seeds(name))]
        if self._cache_ok:
            cache[name] = domain
        return domain


# ---- ImageNet-C files --------------------------------------------------------------------------

class ImageNetCStream(FrameStream):
    """``root/<corruption>/<severity>/<wnid>/*`` trees, one segment per (round, corruption).

    Images already at the model's input size are used as they are (ImageNet-C ships 224x224
    crops); others go through ``crop``. Labels come from the wnid folders, or ``wnid_index``.
    """

    def __init__(self, root: str | Path, corruptions: Sequence[str], crop: Crop,
                 input_hw: tuple[int, int], *, severity: int = 5, rounds: int = 1,
                 seed: int = 0, limit: int | None = None,
                 wnid_index: Callable[[str], int] | None = None, same_order: bool = False
                 ) -> None:
        if wnid_index is None:
            from zoa_ros.core.model.labels import wnid_to_index as wnid_index  # imports timm
        self.root = Path(root)
        self.corruptions, self.crop, self.input_hw = list(corruptions), crop, tuple(input_hw)
        self.severity, self.rounds, self.seed, self.limit = severity, rounds, seed, limit
        self.same_order = same_order
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
        return [SegmentInfo(name, r, len(self.files[name]))
                for r in range(1, self.rounds + 1) for name in self.corruptions]

    def describe(self) -> dict:
        return {"kind": "imagenet-c", "root": str(self.root), "corruptions": self.corruptions,
                "severity": self.severity, "rounds": self.rounds, "seed": self.seed,
                "limit": self.limit, "same_order": self.same_order}

    def _fit(self, image: np.ndarray) -> np.ndarray:
        return image if image.shape[:2] == self.input_hw else self.crop(image)

    def __iter__(self) -> Iterator[Segment]:
        for info in self.plan():
            pairs = self.files[info.name]
            seq = order(len(pairs), self.seed, info.name, info.round, self.same_order)
            frames = load_crops([pairs[j][0] for j in seq], self._fit)
            yield Segment(info.name, info.round, frames, [pairs[j][1] for j in seq])
