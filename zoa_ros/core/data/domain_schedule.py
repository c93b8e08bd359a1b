"""Domain schedules for recorded streams: ``clean:200,fog:200,gaussian_noise:200``.

A schedule is a list of visits ``(domain, frames)``. The frames of each domain are drawn from
that domain's own endless sequence of seeded permutations of the images - permutation ``r`` is
:func:`zoa_ros.core.data.stream.order` ``(n, seed, domain, r)``, the frame order of round ``r`` of
:class:`~zoa_ros.core.data.stream.CorruptionStream` - and each visit takes the next ``frames``
of it.
So ``clean:N,fog:N`` over ``N`` images gives exactly the frames, order and corruption seeds of
``zoa-ros evaluate --corruptions clean,fog`` (and ``clean:N,fog:N,clean:N,fog:N`` those of
``--rounds 2``); other counts cycle through the images, reshuffled on every pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from zoa_ros.core.data.corruptions import ALL_NAMES, derive_seed
from zoa_ros.core.data.stream import order


@dataclass(frozen=True)
class Visit:
    domain: str
    frames: int


@dataclass(frozen=True)
class ScheduledFrame:
    """One frame of a scheduled stream: which image, which corruption and its seed."""

    domain: str
    round: int      # 1-based visit number of this domain
    image: int      # index into the (sorted) image list
    seed: int       # corruption seed: derive_seed(seed, domain, image)


def parse_schedule(spec: str) -> list[Visit]:
    """``"clean:200,fog:200"`` -> visits; a clear error for unknown domains or bad counts."""
    visits = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        domain, sep, count = item.partition(":")
        domain = domain.strip()
        if not sep:
            raise ValueError(f"schedule item {item!r}: expected DOMAIN:FRAMES")
        if domain not in ALL_NAMES:
            raise ValueError(f"schedule item {item!r}: unknown domain {domain!r}; valid: "
                             f"{', '.join(ALL_NAMES)}")
        try:
            frames = int(count)
        except ValueError:
            frames = 0
        if frames < 1:
            raise ValueError(f"schedule item {item!r}: FRAMES must be a positive integer")
        visits.append(Visit(domain, frames))
    if not visits:
        raise ValueError(f"empty schedule {spec!r}; expected e.g. clean:200,fog:200")
    return visits


def scheduled_frames(visits: Sequence[Visit], images: int, seed: int
                     ) -> Iterator[ScheduledFrame]:
    """Every frame of the schedule, in stream order (see the module docstring)."""
    if images < 1:
        raise ValueError("a schedule needs at least one image")
    cursor: dict[str, int] = {}
    rounds: dict[str, int] = {}
    permutations: dict[tuple[str, int], list[int]] = {}
    for visit in visits:
        rounds[visit.domain] = rounds.get(visit.domain, 0) + 1
        start = cursor.get(visit.domain, 0)
        for k in range(start, start + visit.frames):
            number, position = divmod(k, images)
            key = (visit.domain, number + 1)
            if key not in permutations:
                permutations[key] = order(images, seed, visit.domain, number + 1)
            image = permutations[key][position]
            yield ScheduledFrame(visit.domain, rounds[visit.domain], image,
                                 derive_seed(seed, visit.domain, image))
        cursor[visit.domain] = start + visit.frames
