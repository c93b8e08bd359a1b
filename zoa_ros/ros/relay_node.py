"""``relay_node``: answers every camera frame without a model - the transport floor.

``zoa-ros bench node`` runs it in place of ``zoa_node`` to measure what any Python ROS 2 node
pays on the machine before classifying anything: DDS delivery of the image (same QoS and Fast
DDS profile as the node), rclpy's message conversion, reading the pixels
(:func:`~zoa_ros.ros.conversions.to_array`, as the node does) and publishing a
``classification_json`` with the frame's header and no results. ``inference_ms`` (and
``inference_cpu_ms``) carry the time spent reading the pixels. It keeps freed memory as the
node does (:func:`zoa_ros.core.runtime.allocator.keep_freed_memory`), so a 921,600-byte frame is not
page-faulted in afresh on every message either.

Run: ``python -m zoa_ros.ros.relay_node --ros-args [-p qos.depth:=N]
[-p qos.reliability:=reliable] [-r image:=/topic]``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from zoa_ros.core.runtime.allocator import keep_freed_memory
from zoa_ros.ros import conversions
from zoa_ros.ros.node import input_qos


class RelayNode(Node):
    """Subscribes to ``image`` with zoa_node's input QoS (``qos.depth``, ``qos.reliability``)
    and answers each frame."""

    def __init__(self) -> None:
        super().__init__("relay_node")
        depth = self.declare_parameter("qos.depth", 5).value
        reliability = self.declare_parameter("qos.reliability", "best_effort").value
        qos = input_qos(reliability, depth)
        self.results = self.create_publisher(String, "classification_json", 10)
        self.create_subscription(Image, "image", self._on_image, qos)

    def _on_image(self, msg: Any) -> None:
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            conversions.to_array(msg, "raw")
        except conversions.MalformedMessage as e:
            self.get_logger().warning(f"malformed message: {e}", throttle_duration_sec=5.0)
            return
        ms = (time.perf_counter() - start) * 1e3
        cpu_ms = (time.thread_time() - cpu_start) * 1e3
        self.results.publish(String(data=conversions.result_json(
            msg.header, "image", [], ms, 0, 0, 0, cpu_ms)))


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    rclpy.init(args=sys.argv if argv is None else argv)
    node = RelayNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
