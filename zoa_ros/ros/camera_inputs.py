"""The node's camera subscriptions, taken on a thread of their own.

``zoa_node`` answers its services, parameters and timers on a ``MultiThreadedExecutor``: a bank
save or a reset may wait seconds for an adaptation step, and must not stop the cameras. So the
subscriptions live on a small companion node, ``<node name>_input`` in the same namespace, that
no executor spins. Its thread waits on one rcl wait set that holds the subscriptions, the
companion's event handlers (rclpy's warnings about incompatible QoS) and a guard condition
that ends the wait on close; it takes every message that is ready and calls the callback, which
only checks the message and puts it in the newest-frame slot.

Why not an rclpy executor: every executor rebuilds its wait set in Python on every wake-up and
runs each callback as a task. On a frame's path that cost 0.3 ms more per frame than this loop
(docs/RESULTS.md §4.11; the multi-threaded one cost more still, §4.6). rclpy has no public wait
set, so this uses the one its executors use (``rclpy_implementation.WaitSet``); the node tests
run it with the real rclpy.

Topic names are resolved by the owning node (its namespace and remappings, node-specific ones
included) and the companion applies no remapping of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rclpy.guard_condition import GuardCondition
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.subscription import Subscription
from rclpy.waitable import NumberOfEntities, Waitable

SUFFIX = "_input"
WAIT_NS = 500_000_000   # wake up this often anyway to notice a shut-down context


def input_node_name(node: str) -> str:
    """The name of the node that holds ``node``'s camera subscriptions (also fully qualified)."""
    return node + SUFFIX


class CameraInputs:
    """Subscriptions for ``owner``'s cameras on a companion node, taken on a thread of their
    own."""

    def __init__(self, owner: Node) -> None:
        self._owner = owner
        self.node = Node(input_node_name(owner.get_name()), namespace=owner.get_namespace(),
                         context=owner.context, use_global_arguments=False,
                         start_parameter_services=False)
        self._subscriptions: list[Subscription[Any]] = []
        self._wake = GuardCondition(None, None, context=owner.context)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, msg_type: type, topic: str, callback: Callable[[Any], None],
                  qos: QoSProfile) -> None:
        """Subscribe to ``topic`` as the owner names it (its namespace and remappings)."""
        self._subscriptions.append(self.node.create_subscription(
            msg_type, self._owner.resolve_topic_name(topic), callback, qos))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._take_loop, name="zoa_camera_inputs",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop delivering frames: end the thread's wait, join it, then remove the companion.
        Closing again does nothing."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.trigger()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._wake.destroy()
        self.node.destroy_node()

    def _take_loop(self) -> None:
        waitables: list[Waitable[Any]] = list(self.node.waitables)
        count = NumberOfEntities(len(self._subscriptions), 1)
        for waitable in waitables:
            count += waitable.get_num_entities()
        wait_set = _rclpy.WaitSet(count.num_subscriptions, count.num_guard_conditions,
                                  count.num_timers, count.num_clients, count.num_services,
                                  count.num_events, self.node.context.handle)
        log = self.node.get_logger()
        while not self._stopping.is_set() and self.node.context.ok():
            wait_set.clear_entities()
            for sub in self._subscriptions:
                wait_set.add_subscription(sub.handle)
            wait_set.add_guard_condition(self._wake.handle)
            for waitable in waitables:
                waitable.add_to_wait_set(wait_set)
            wait_set.wait(WAIT_NS)
            if self._stopping.is_set():
                break
            ready = wait_set.get_ready_entities("subscription")
            for sub in self._subscriptions:
                if sub.handle.pointer not in ready:
                    continue
                while (taken := sub.handle.take_message(sub.msg_type, sub.raw)) is not None:
                    try:
                        sub.callback(taken[0])
                    except Exception as e:   # keep serving the other frames and cameras
                        log.error(f"{sub.topic_name}: {type(e).__name__}: {e}",
                                  throttle_duration_sec=5.0)
            for waitable in waitables:
                if waitable.is_ready(wait_set):
                    _run(waitable.execute(waitable.take_data()))


def _run(coroutine: Any) -> None:
    """Run a waitable's ``execute`` coroutine, which does not wait on anything, to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
