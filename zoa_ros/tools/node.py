"""``zoa-ros node``: run the ROS 2 node (same as the ``zoa_node`` console script); every argument
after ``node`` goes to it, e.g. ``zoa-ros node --ros-args --params-file config/zoa.yaml``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    # prefix_chars="+": '--ros-args', '-p', '-h' ... are passed through to the node untouched.
    p = sub.add_parser("node", help="run the ROS 2 node zoa_node (args go to the node)",
                       description=__doc__, prefix_chars="+", add_help=False)
    p.add_argument("node_args", nargs=argparse.REMAINDER,
                   help="arguments for zoa_node (--help lists its parameters)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoa_ros.ros.node import main  # imports rclpy: only when the node runs

    return main(list(args.node_args), prog="zoa-ros node")
