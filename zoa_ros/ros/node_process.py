"""Run ``zoa_node`` as its own process and talk to its services (demo, benchmark, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rclpy.node import Node
from std_srvs.srv import Trigger

from zoa_ros.ros.params import config_path


def ros_env(domain_id: int, ros_home: str | Path) -> dict[str, str]:
    """Environment for an isolated local ROS graph: own domain, localhost discovery."""
    env = dict(os.environ)
    env.update({"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                "ROS_HOME": str(ros_home), "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
                "PYTHONUNBUFFERED": "1"})
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


class NodeProcess:
    """``zoa_node`` in a subprocess with the default params file plus ``overrides``; another
    node ``module`` of this package takes ``params_file=False`` (``overrides`` only)."""

    def __init__(self, overrides: dict[str, object], env: dict[str, str], log: Path,
                 remaps: dict[str, str] | None = None, module: str = "zoa_ros.ros.node",
                 params_file: bool = True) -> None:
        args = [sys.executable, "-m", module, "--ros-args"]
        if params_file:
            args += ["--params-file", str(config_path("zoa.yaml"))]
        for name, value in overrides.items():
            args += ["-p", f"{name}:={_ros_value(value)}"]
        for src, dst in (remaps or {}).items():
            args += ["-r", f"{src}:={dst}"]
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory so far (Linux ``VmHWM``), MiB; ``None`` if it
        cannot be read (another system, the process gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (the node autosaves and exits cleanly); SIGKILL if it hangs."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def call_trigger(node: Node, service: str, timeout: float = 60.0,
                 attempt_s: float = 10.0) -> Trigger.Response:
    """Call a std_srvs/Trigger service and wait for the answer (see :func:`call_service`)."""
    return call_service(node, Trigger, service, Trigger.Request(), timeout, attempt_s)


def call_service(node: Node, srv_type: Any, service: str, request: Any,
                 timeout: float = 60.0, attempt_s: float = 10.0) -> Any:
    """Call a service and wait for the answer (``node`` must be spinning).

    A service can be discovered before its response writer has matched this client, and then
    the first response is lost; so an unanswered request is sent again every ``attempt_s``.
    """
    client = node.create_client(srv_type, service)
    deadline = time.monotonic() + timeout
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {service} did not appear within {timeout:.0f} s")
        while time.monotonic() < deadline:
            future = client.call_async(request)
            retry_at = min(deadline, time.monotonic() + attempt_s)
            while not future.done() and time.monotonic() < retry_at:
                time.sleep(0.01)
            if future.done():
                return future.result()
            client.remove_pending_request(future)
        raise TimeoutError(f"service {service} did not answer within {timeout:.0f} s")
    finally:
        node.destroy_client(client)


def _ros_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
