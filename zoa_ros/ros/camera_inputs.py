"""The node's camera subscriptions, on an executor thread of their own.

``zoa_node`` answers its services, parameters and timers on a ``MultiThreadedExecutor``: a bank
save or a reset may wait seconds for an adaptation step, and must not stop the cameras. rclpy's
multi-threaded executor hands every ready callback from its waiting thread to a worker thread,
and rebuilds its wait set over all of the node's entities (lifecycle and parameter services,
publishers, timers) in Python each time. A single-threaded executor takes the message and runs
the callback in the thread that waited, which is what ``zoa-ros bench node``'s relay floor pays
(docs/RESULTS.md §4.6: what the multi-threaded one cost the node).

rclpy spins whole nodes, not callback groups, so the subscriptions live on a small companion
node, ``<node name>_input`` in the same namespace, spun by a ``SingleThreadedExecutor``. Its
callbacks only check a message and put it in the newest-frame slot. Topic names are resolved by
the owning node (its namespace and remappings, node-specific ones included) and the companion
applies no remapping of its own.

Who spins it: while the inference thread waits for a frame, the inference thread itself
(:meth:`CameraInputs.receive`), so a frame that arrives then is classified on the thread that
took it from DDS, with no hand-off (waking another thread cost 0.4-0.5 ms here: RESULTS
§4.10-§4.11). While it classifies (:meth:`CameraInputs.computing`), a thread of this class's
own, so frames arriving meanwhile are counted and the newest waits in its slot. One lock (the
executor is spun by one thread at a time) passes between the two; a guard condition ends the
background thread's wait when the classification is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

SUFFIX = "_input"


def input_node_name(node: str) -> str:
    """The name of the node that holds ``node``'s camera subscriptions (also fully qualified)."""
    return node + SUFFIX


class CameraInputs:
    """Subscriptions for ``owner``'s cameras on a companion node; spun by the inference thread
    while it waits (:meth:`receive`) and by a thread of its own while it classifies
    (:meth:`computing`)."""

    def __init__(self, owner: Node) -> None:
        self._owner = owner
        self.node = Node(input_node_name(owner.get_name()), namespace=owner.get_namespace(),
                         context=owner.context, use_global_arguments=False,
                         start_parameter_services=False)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._spinning = threading.Lock()       # held by whichever thread spins the executor
        self._computing = threading.Event()     # set while the inference thread classifies
        self._wake = self.node.create_guard_condition(lambda: None)
        self._closing = threading.Lock()        # no trigger of the guard once it is destroyed
        self._closed = False
        self._thread: threading.Thread | None = None

    def subscribe(self, msg_type: type, topic: str, callback: Callable[[Any], None],
                  qos: QoSProfile) -> None:
        """Subscribe to ``topic`` as the owner names it (its namespace and remappings)."""
        self.node.create_subscription(msg_type, self._owner.resolve_topic_name(topic), callback,
                                      qos)

    def start(self) -> None:
        """Start the thread that takes frames while the inference thread classifies."""
        self._thread = threading.Thread(target=self._receive_while_computing,
                                        name="zoa_camera_inputs", daemon=True)
        self._thread.start()

    def receive(self, timeout: float, ready: Callable[[], bool]) -> None:
        """On the inference thread, with nothing to classify: wait up to ``timeout`` seconds
        for one message and run its callback here, unless ``ready()`` (a frame already waits,
        taken meanwhile by the other thread)."""
        with self._spinning:
            if not self._closed and not ready():
                self._spin_once(timeout)

    @contextmanager
    def computing(self) -> Iterator[None]:
        """While the inference thread classifies: the thread of this class takes the frames."""
        self._computing.set()
        try:
            yield
        finally:
            self._computing.clear()
            self._trigger()   # end its wait, so the inference thread may spin again

    def close(self) -> None:
        """Stop delivering frames: end the threads' spinning, then remove the companion node.
        The inference thread must stop calling :meth:`receive` (it returns at once now).
        Closing twice does nothing more."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._computing.set()
            self._wake.trigger()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._spinning, self._closing:   # the inference thread is out of the executor
            self._executor.shutdown(timeout_sec=5.0)
            self.node.destroy_node()

    def _receive_while_computing(self) -> None:
        while True:
            self._computing.wait()
            with self._spinning:
                while self._computing.is_set() and not self._closed:
                    self._spin_once(None)
            if self._closed:
                return

    def _trigger(self) -> None:
        with self._closing:
            if not self._closed:
                self._wake.trigger()

    def _spin_once(self, timeout: float | None) -> None:
        try:
            self._executor.spin_once(timeout_sec=timeout)
        except (ShutdownException, ExternalShutdownException):   # the context is shutting down
            pass
