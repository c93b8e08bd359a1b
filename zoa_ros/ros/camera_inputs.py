"""The node's camera subscriptions, on an executor thread of their own.

``zoa_node`` answers its services, parameters and timers on a ``MultiThreadedExecutor``: a bank
save or a reset may wait seconds for an adaptation step, and must not stop the cameras. rclpy's
multi-threaded executor hands every ready callback from its waiting thread to a worker thread,
and rebuilds its wait set over all of the node's entities (lifecycle and parameter services,
publishers, timers) in Python each time. A single-threaded executor takes the message and runs
the callback in the thread that waited, which is what ``zoa-ros bench node``'s relay floor pays
(docs/lab/node-latency.md §4.6: what the multi-threaded one cost the node).

rclpy spins whole nodes, not callback groups, so the subscriptions live on a small companion
node, ``<node name>_input`` in the same namespace, spun by a ``SingleThreadedExecutor`` on its
own thread. Its callbacks only check a message and put it in the newest-frame slot. Topic names
are resolved by the owning node (its namespace and remappings, node-specific ones included) and
the companion applies no remapping of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

SUFFIX = "_input"


def input_node_name(node: str) -> str:
    """The name of the node that holds ``node``'s camera subscriptions (also fully qualified)."""
    return node + SUFFIX


class CameraInputs:
    """Subscriptions for ``owner``'s cameras on a companion node and executor thread."""

    def __init__(self, owner: Node) -> None:
        self._owner = owner
        self.node = Node(input_node_name(owner.get_name()), namespace=owner.get_namespace(),
                         context=owner.context, use_global_arguments=False,
                         start_parameter_services=False)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._thread: threading.Thread | None = None

    def subscribe(self, msg_type: type, topic: str, callback: Callable[[Any], None],
                  qos: QoSProfile, transport: str = "") -> str:
        """Subscribe to ``topic`` as the owner names it (its namespace and remappings), or with
        a ``transport`` (e.g. ``compressed``) to ``<resolved topic>/<transport>`` as
        image_transport names it (a remapping of that full name applies too); returns the
        topic subscribed to."""
        name = self.resolve(topic, transport)
        self.node.create_subscription(msg_type, name, callback, qos)
        return name

    def resolve(self, topic: str, transport: str = "") -> str:
        """The topic :meth:`subscribe` would subscribe to."""
        name = self._owner.resolve_topic_name(topic)
        return self._owner.resolve_topic_name(f"{name}/{transport}") if transport else name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._executor.spin, name="zoa_camera_inputs",
                                        daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the executor thread delivering the frames runs."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop delivering frames: end the executor thread, then remove the companion node."""
        self._executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.node.destroy_node()
