"""Where fleet jobs run: a local process pool (the default; nothing to start) or a Ray cluster.

Both turn a :class:`~zoa_ros.tools.fleet.worker.BagJob` into a ``concurrent.futures.Future`` of
its :class:`~zoa_ros.tools.fleet.worker.BagOutcome` that completes when the job does, so the
runner streams results from either the same way (``concurrent.futures.wait``). Retrying is the
runner's (once); Ray's own task retries are off, so every failure is seen and counted once.

* :class:`LocalPool`: ``workers`` processes forked from a ``forkserver`` that has imported
  torch and the replay code once (never forked from this process, whose torch may already run
  threads; ``spawn`` where there is no forkserver). Importing them takes about 5 s of CPU and
  0.9 GB, which the workers then share instead of paying each. Each worker keeps the pack
  loaded between its jobs. A worker that dies (killed, out of memory) breaks the pool:
  :meth:`LocalPool.restart` starts a new one for the jobs still to run.
* :class:`RayExecutor`: ``--ray auto`` joins the cluster this machine belongs to (``RAY_ADDRESS``
  or one started with ``ray start``) and otherwise starts a local Ray instance; ``--ray local``
  always starts a local instance of its own; ``--ray ADDRESS`` joins that cluster
  (``HOST:6379``, or ``ray://HOST:10001`` through Ray Client). The pack goes
  into Ray's object store once; every task asks for ``job.threads`` CPUs and ``job.memory_mb``
  of memory, so Ray places as many on a node as it can hold. Bags are opened by the node that
  runs the task, at the path the job names.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor

from zoa_ros.tools.fleet.worker import MIB, BagJob, measure_cost, run_job

# What the local workers' forkserver imports once: torch and the replay's code.
PRELOAD = ["torch", "zoa_ros.tools.replay", "zoa_ros.core.eval.evaluation",
           "zoa_ros.tools.fleet.worker"]


class LocalPool:
    """``workers`` local processes."""

    kind = "process-pool"

    def __init__(self, fingerprint: str, pack_path: str, workers: int = 1) -> None:
        self.fingerprint, self.pack_path, self.workers = fingerprint, pack_path, workers
        self._context = _context()
        self._pool: ProcessPoolExecutor | None = None
        # the pool each job went to, while the runner holds its future
        self._born: weakref.WeakKeyDictionary[Future, ProcessPoolExecutor] = \
            weakref.WeakKeyDictionary()
        self.restarts = 0

    @property
    def slots(self) -> int:
        return self.workers

    def probe(self, **options: object) -> dict:
        """:func:`~zoa_ros.tools.fleet.worker.measure_cost` in a process of its own."""
        with ProcessPoolExecutor(1, mp_context=self._context) as one:
            return one.submit(measure_cost, self.fingerprint, self.pack_path,
                              **options).result()

    def submit(self, job: BagJob) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=self._context)
        future = self._pool.submit(run_job, job, self.fingerprint, self.pack_path)
        self._born[future] = self._pool
        return future

    def restart(self, failed: Future) -> None:
        """``failed``'s worker died and broke its pool: drop that pool (once, however many of
        its jobs report it); the next job starts a new one."""
        if self._born.pop(failed, None) is self._pool and self._pool is not None:
            self.close(cancel=True)
            self.restarts += 1

    def describe(self) -> dict:
        return {"executor": self.kind, "workers": self.workers, "restarts": self.restarts}

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None


def _context() -> multiprocessing.context.BaseContext:
    """A forkserver that preloads what every job imports; ``spawn`` where there is none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


class RayExecutor:
    """Tasks on a Ray cluster (see the module docstring), ``task_cpus`` CPUs each;
    ``local_cpus``: the CPUs of a local instance this starts (default: all)."""

    kind = "ray"

    def __init__(self, address: str, fingerprint: str, pack_bytes: bytes, task_cpus: int = 1,
                 local_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as e:
            raise ValueError("--ray needs the ray package: pip install 'zoa_ros[fleet]'") from e
        self._ray = ray
        self.address, self.fingerprint, self.task_cpus = address, fingerprint, task_cpus
        self.started_local = False
        self._owns = not ray.is_initialized()
        start = time.perf_counter()
        if self._owns:
            self._connect(address, local_cpus)
        self.init_s = time.perf_counter() - start
        self._pack = ray.put(pack_bytes)
        self._run = ray.remote(run_job)
        self._refs: dict[Future, object] = {}

    def _connect(self, address: str, local_cpus: int | None) -> None:
        ray = self._ray
        quiet = {"include_dashboard": False, "log_to_driver": False,
                 "logging_level": logging.WARNING}
        if address == "local":
            ray.init(address="local", num_cpus=local_cpus, **quiet)
            self.started_local = True
            return
        if address != "auto":
            ray.init(address=address, **quiet)
            return
        try:
            ray.init(address="auto", **quiet)
        except ConnectionError:   # no cluster to join: start one on this machine
            ray.init(num_cpus=local_cpus, **quiet)
            self.started_local = True

    @property
    def slots(self) -> int:
        """Jobs the cluster's CPUs can run at once."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)) // self.task_cpus)

    def probe(self, **options: object) -> dict:
        task = self._ray.remote(measure_cost).options(
            num_cpus=int(options.get("threads", 1)), max_retries=0)
        return self._ray.get(task.remote(self.fingerprint, self._pack, **options))

    def submit(self, job: BagJob) -> Future:
        options: dict = {"num_cpus": job.threads, "max_retries": 0}
        if job.memory_mb:
            options["memory"] = job.memory_mb * MIB
        ref = self._run.options(**options).remote(job, self.fingerprint, self._pack)
        future = ref.future()
        self._refs[future] = ref
        future.add_done_callback(lambda f: self._refs.pop(f, None))
        return future

    def restart(self, failed: Future) -> None:
        """Ray replaces its own dead workers; nothing to do."""

    def describe(self) -> dict:
        resources = self._ray.cluster_resources()
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        return {"executor": self.kind, "address": self.address,
                "started_local_instance": self.started_local, "init_s": self.init_s,
                "nodes": len(nodes),
                "cluster_cpus": resources.get("CPU", 0),
                "cluster_memory_mb": int(resources.get("memory", 0) // MIB)}

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in list(self._refs.values()):
                self._ray.cancel(ref, force=True)
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
