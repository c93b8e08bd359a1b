"""The stream-shape options ``zoa-ros evaluate`` and ``zoa-ros make-bag`` share: ``--order``,
``--dwell`` and the per-visit ``--schedule`` syntax (so a bag and an evaluation of the same
options hold the same frames)."""

from __future__ import annotations

import argparse

from zoa_ros.core.data.stream_order import StreamOrder

SCHEDULE_HELP = ("DOMAIN[@SEVERITY]:FRAMES,... in stream order, e.g. "
                 "clean:300,fog@3:200,gaussian_noise@5:200,clean:300 (domains: 'clean' or a "
                 "corruption name; without @SEVERITY: --severity)")


def add_order_arguments(p: argparse.ArgumentParser) -> None:
    """--order, --dwell."""
    p.add_argument("--order", type=stream_order, default=StreamOrder(), metavar="ORDER",
                   help="frame order within each pass over a domain's images: iid (shuffled, "
                        "the default), class-sorted (by class index: related classes come "
                        "together, as a camera sees them) or dirichlet:D (label-Dirichlet "
                        "sequence, D = 0.1 strongly correlated)")
    p.add_argument("--dwell", type=int, default=1, metavar="K",
                   help="hold each image for K consecutive frames (default 1)")


def check_order_arguments(args: argparse.Namespace, labelled: bool = True) -> None:
    if args.dwell < 1:
        raise ValueError("--dwell must be >= 1")
    if args.order.needs_labels and not labelled:
        raise ValueError(f"--order {args.order} sorts by class: it needs labels")


def stream_order(text: str) -> StreamOrder:
    try:
        return StreamOrder.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
