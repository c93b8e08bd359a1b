"""What the live benchmarks (``bench node``, ``bench fuzz``, ``bench soak``) share: their node
parameter, ROS domain and output options, joining an isolated local ROS graph with the node they
start, and writing the JSON result."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


def add_live_arguments(p: argparse.ArgumentParser, out: str, domain_base: int) -> None:
    """--param, --domain-id (default ``domain_base`` plus the process id modulo 29), --out,
    --json."""
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra zoa_node parameter (repeatable; default: the shipped config)")
    p.add_argument("--domain-id", type=int, default=domain_base + os.getpid() % 29,
                   help="ROS_DOMAIN_ID of the isolated local graph (default %(default)s)")
    p.add_argument("--out", default=out, help="folder for the node logs")
    p.add_argument("--json", help="also write the results here")


@contextlib.contextmanager
def isolated_graph(out: Path, domain_id: int) -> Iterator[dict[str, str]]:
    """This process on a local ROS graph of its own (domain ``domain_id``, localhost
    discovery, the large-image Fast DDS profile, ROS_HOME under ``out``, created) with rclpy
    initialised; yields the environment for the node processes to start on it."""
    from zoa_ros.ros import params
    from zoa_ros.ros.node_process import ros_env

    out.mkdir(parents=True, exist_ok=True)
    env = ros_env(domain_id=domain_id, ros_home=(out / "ros").resolve())
    params.use_default_fastdds_profile(env)
    os.environ.update(env)   # this process joins the same isolated graph
    import rclpy

    rclpy.init()
    try:
        yield env
    finally:
        rclpy.try_shutdown()


def write_json(path: str | None, report: dict) -> None:
    """``report`` as indented JSON at ``path`` (nothing when ``None``)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))
