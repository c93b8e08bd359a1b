"""Domain schedules: ``clean:300,fog@3:200,gaussian_noise@5:200,clean:300``.

A schedule is a list of visits ``(domain, frames, severity)``; ``DOMAIN@S`` gives a corruption
its own severity (else the run's ``--severity``), and names the visit's segment ``DOMAIN@S``.
The frames of each domain (one sequence per name) are drawn from that domain's own endless
sequence of passes over the images - pass ``r`` is the seeded permutation of
:class:`~zoa_ros.core.data.stream_order.StreamOrder` (``iid``: :func:`~.stream_order.order`,
the frame order of round ``r`` of :class:`~zoa_ros.core.data.stream.CorruptionStream`), each
image held for ``dwell`` consecutive frames - and each visit takes the next ``frames`` of it.
So ``clean:N,fog:N`` over ``N`` images gives exactly the frames, order and corruption seeds of
``zoa-ros evaluate --corruptions clean,fog`` (and ``clean:N,fog:N,clean:N,fog:N`` those of
``--rounds 2``); other counts cycle through the images, reshuffled on every pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from zoa_ros.core.data.corruptions import ALL_NAMES, CLEAN, SEVERITIES, derive_seed
from zoa_ros.core.data.stream_order import StreamOrder


@dataclass(frozen=True)
class Visit:
    domain: str
    frames: int
    severity: int | None = None   # None: the run's severity

    @property
    def name(self) -> str:
        """The segment's name: the domain, with ``@S`` when the visit sets its severity."""
        return self.domain if self.severity is None else f"{self.domain}@{self.severity}"


@dataclass(frozen=True)
class ScheduledFrame:
    """One frame of a scheduled stream: which image, which corruption and its seed."""

    domain: str
    round: int      # 1-based visit number of this domain
    image: int      # index into the (sorted) image list
    seed: int       # corruption seed: derive_seed(seed, domain, ids[image])
    name: str = ""  # the visit's segment name (Visit.name)
    severity: int | None = None


def parse_schedule(spec: str) -> list[Visit]:
    """``"clean:200,fog@3:200"`` -> visits; a clear error for unknown domains, bad counts or
    severities."""
    visits = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        domain, sep, count = item.partition(":")
        domain, at, level = (s.strip() for s in domain.partition("@"))
        if not sep:
            raise ValueError(f"schedule item {item!r}: expected DOMAIN[@SEVERITY]:FRAMES")
        if domain not in ALL_NAMES:
            raise ValueError(f"schedule item {item!r}: unknown domain {domain!r}; valid: "
                             f"{', '.join(ALL_NAMES)}")
        severity = None
        if at:
            if domain == CLEAN:
                raise ValueError(f"schedule item {item!r}: 'clean' has no severity")
            severity = _positive(level)
            if severity not in SEVERITIES:
                raise ValueError(f"schedule item {item!r}: SEVERITY must be one of "
                                 f"{', '.join(map(str, SEVERITIES))}")
        frames = _positive(count)
        if frames < 1:
            raise ValueError(f"schedule item {item!r}: FRAMES must be a positive integer")
        visits.append(Visit(domain, frames, severity))
    if not visits:
        raise ValueError(f"empty schedule {spec!r}; expected e.g. clean:200,fog:200")
    return visits


def _positive(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def scheduled_frames(visits: Sequence[Visit], images: int, seed: int, *,
                     labels: Sequence[int] | None = None, ids: Sequence[int] | None = None,
                     stream_order: StreamOrder | None = None, dwell: int = 1,
                     same_order: bool = False) -> Iterator[ScheduledFrame]:
    """Every frame of the schedule, in stream order (see the module docstring).

    ``labels``: each image's class (needed by the correlated orders); ``ids``: each image's
    stable index, which seeds its corruption (default: its position); ``same_order``: every
    pass replays pass 1's order."""
    if images < 1:
        raise ValueError("a schedule needs at least one image")
    if dwell < 1:
        raise ValueError(f"dwell must be >= 1, got {dwell}")
    stream_order = stream_order or StreamOrder()
    ids = range(images) if ids is None else ids
    cursor: dict[str, int] = {}
    rounds: dict[str, int] = {}
    permutations: dict[tuple[str, int], list[int]] = {}
    for visit in visits:
        name = visit.name
        rounds[name] = rounds.get(name, 0) + 1
        start = cursor.get(name, 0)
        for k in range(start, start + visit.frames):
            number, position = divmod(k // dwell, images)
            key = (name, number + 1)
            if key not in permutations:
                permutations[key] = stream_order.permutation(labels, images, seed, name,
                                                             number + 1, same_order)
            image = permutations[key][position]
            yield ScheduledFrame(visit.domain, rounds[name], image,
                                 derive_seed(seed, visit.domain, ids[image]), name,
                                 visit.severity)
        cursor[name] = start + visit.frames
