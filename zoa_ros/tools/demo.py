"""``zoa-ros demo``: the main job on the embedded default.

``zoa_node`` runs as its own process (default config, the default pack: W8A8 EfficientNet-Lite0
with the ImageNet weights of the efficientnet-lite0 pip package, built once into the user's
cache, :mod:`zoa_ros.core.model.default_pack`) while a virtual camera publishes real photos
bundled with scikit-image at 15 Hz (640x480 rgb8) through a schedule of domains: clean, then
corruptions, then clean again. The stream runs twice through the same node: adaptation off,
then on (``~/set_adaptation``, after ``~/reset``). A console table shows per domain the
frames, how often the node agrees with the unadapted model's prediction of the same photo on
its clean frame, adaptation steps, bank entries and latency; at the end both runs side by side,
per domain. It ends by calling ``~/save_knowledge``, restarting the node, calling
``~/load_knowledge`` and checking the bank came back.

``--photos-only`` just classifies the photos (no ROS).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from zoa_ros.core.files.sample_photos import PHOTOS, load_photo, write_photos
from zoa_ros.tools.packs import resolve_pack

SCHEDULE = "clean:6,gaussian_noise:10,fog:10,contrast:10,clean:6"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="node + virtual camera through changing domains",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo", help="folder for photos, bank and logs")
    p.add_argument("--quant", default="w8a8", choices=("none", "w8a8", "w6a6", "w4a4"))
    p.add_argument("--schedule", default=SCHEDULE, help="DOMAIN:SECONDS,... (default %(default)s)")
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    p.add_argument("--rate", type=float, default=15.0, help="camera rate in Hz")
    p.add_argument("--no-adaptation", action="store_true",
                   help="only the run with adaptation off (the baseline), no bank check")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"),
                   help="the node's inference.backend (default: config/zoa.yaml's, auto)")
    p.add_argument("--photos-only", action="store_true", help="classify the photos, no ROS")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    pack_path = resolve_pack(None, args.quant)
    if args.photos_only:
        photos = write_photos(out / "photos")
        from zoa_ros.tools import classify
        return classify.run(argparse.Namespace(pack=str(pack_path), json=False, top_k=5,
                                               backend=args.backend or "auto", int8_model=None,
                                               max_pixels=classify.DEFAULT_MAX_PIXELS,
                                               images=[str(p) for p in photos]))
    return _live(args, out, pack_path)


def _live(args: argparse.Namespace, out: Path, pack_path: Path) -> int:
    from zoa_ros.ros import params
    from zoa_ros.ros.node_process import ros_env

    env = ros_env(domain_id=100 + os.getpid() % 100, ros_home=out / "ros")
    params.use_default_fastdds_profile(env)
    os.environ.update(env)  # this process joins the same isolated graph
    import rclpy

    from zoa_ros.ros.virtual_camera import parse_schedule

    phases = parse_schedule(args.schedule)
    rclpy.init()
    try:
        return _Demo(args, out, pack_path, phases, env).run()
    finally:
        rclpy.try_shutdown()


class _Demo:
    """The orchestration: camera + result listener in this process, the node in another."""

    def __init__(self, args, out, pack_path, phases, env) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from zoa_ros.ros.virtual_camera import VirtualCamera, render_frames

        self.args, self.out, self.phases, self.env = args, out, phases, env
        self.bank = out / "demo.zoabank"
        self.bank.unlink(missing_ok=True)
        self.overrides = {"pack": pack_path.resolve(), "knowledge.bank_path": self.bank.resolve(),
                          "knowledge.autoload": False, "adaptation.interval_frames": 32,
                          "adaptation.enabled": False}
        if args.backend:
            self.overrides["inference.backend"] = args.backend
        print("rendering frames ...", flush=True)
        images = [load_photo(n) for n in PHOTOS]
        frames = render_frames(images, {p.domain for p in phases}, (640, 480), args.severity)
        self.camera = VirtualCamera(topic="image")
        self.messages = {key: self.camera.message(frame) for key, frame in frames.items()}
        self.sent: dict[tuple[int, int], tuple[int, int, float]] = {}
        self.results: dict[int, list[dict]] = defaultdict(list)
        self.clean_top1: dict[int, int] = {}
        self.lock = threading.Lock()
        self.camera.create_subscription(String, "classification_json", self._on_result, 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.camera)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)

    def run(self) -> int:
        from std_srvs.srv import SetBool

        from zoa_ros.ros.node_process import NodeProcess, call_service, call_trigger

        self.spinner.start()
        log = self.out / "node.log"
        node = NodeProcess(self.overrides, self.env, log)
        try:
            self._wait_for_node(node)
            print("\nrun 1 of 2: adaptation off (the unadapted model)")
            off = self._stream()
            if self.args.no_adaptation:
                return 0
            call_trigger(self.camera, "/zoa_node/reset")
            call_service(self.camera, SetBool, "/zoa_node/set_adaptation", SetBool.Request(
                data=True))
            print("\nrun 2 of 2: adaptation on, the same stream")
            on = self._stream()
            # Freeze the bank first: a step still running on buffered frames could otherwise add
            # an entry after the save, and the autosave at shutdown would write that instead.
            call_service(self.camera, SetBool, "/zoa_node/set_adaptation", SetBool.Request(
                data=False))
            saved = call_trigger(self.camera, "/zoa_node/save_knowledge")
            print(f"\n~/save_knowledge: {saved.message}")
        finally:
            code = node.stop()
            if self.args.no_adaptation:
                self.executor.shutdown()
                self.spinner.join(timeout=5)
        self._compare(off, on)
        print(f"node stopped (exit code {code}); restarting it with an empty bank ...",
              flush=True)
        node = NodeProcess({**self.overrides, "knowledge.autosave": False}, self.env, log)
        try:
            self._wait_for_node(node)
            loaded = call_trigger(self.camera, "/zoa_node/load_knowledge", timeout=120)
            print(f"~/load_knowledge: {loaded.message}")
        finally:
            node.stop()
            self.executor.shutdown()
            self.spinner.join(timeout=5)
        ok = saved.success and loaded.success and _entries(saved) == _entries(loaded)
        print("bank came back after the restart: "
              f"{'yes' if ok else 'NO'} ({_entries(loaded)} entries)")
        return 0 if ok else 1

    def _compare(self, off: list[dict], on: list[dict]) -> None:
        """Both runs side by side: agreement with the unadapted model's clean prediction."""
        print(f"\n{'domain':16s} {'agree, off':>10s} {'agree, on':>10s} {'on - off':>9s}")
        worse = []
        for a, b in zip(off, on, strict=True):
            diff = b["agree"] - a["agree"]
            print(f"{a['domain']:16s} {a['agree']:9.0f}% {b['agree']:9.0f}% {diff:+8.0f}")
            if diff < -0.5:
                worse.append(a["domain"])
        print("adaptation wins or ties on every domain" if not worse else
              f"adaptation loses on: {', '.join(worse)}")

    def _wait_for_node(self, node) -> None:
        """Until the node is active: its camera subscription matches our publisher."""
        print("starting zoa_node (loading the pack) ...", flush=True)
        deadline = time.monotonic() + 120
        while self.camera.publisher.get_subscription_count() == 0:
            if not node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"zoa_node did not come up; see {node.log_path}")
            time.sleep(0.1)

    def _on_result(self, msg) -> None:
        result = json.loads(msg.data)
        key = (result["stamp"]["sec"], result["stamp"]["nanosec"])
        with self.lock:
            sent = self.sent.get(key)
            if sent is not None:
                phase, photo, t_pub = sent
                result["photo"], result["e2e_ms"] = photo, (time.monotonic() - t_pub) * 1e3
                self.results[phase].append(result)

    def _stream(self) -> list[dict]:
        """One pass of the schedule; a row per domain (also printed)."""
        period = 1.0 / self.args.rate
        with self.lock:
            self.sent.clear()
            self.results.clear()
        print(f"camera: {len(PHOTOS)} photos at {self.args.rate:g} Hz, 640x480 rgb8, "
              f"severity {self.args.severity}\n")
        print(f"{'domain':16s} {'sent':>5s} {'classified':>10s} {'agree w/ clean':>14s} "
              f"{'adapt steps':>11s} {'bank':>4s} {'infer ms p50':>12s} {'e2e ms p50':>10s}")
        rows = []
        tick, n = time.monotonic(), 0
        for index, phase in enumerate(self.phases):
            end = tick + phase.seconds
            sent = 0
            while tick < end:
                photo = n % len(PHOTOS)
                stamp = self.camera.publish(self.messages[(phase.domain, photo)])
                with self.lock:
                    self.sent[stamp] = (index, photo, time.monotonic())
                n, sent, tick = n + 1, sent + 1, tick + period
                time.sleep(max(0.0, tick - time.monotonic()))
            time.sleep(0.3)  # let in-flight results arrive
            rows.append(self._print_row(index, phase.domain, sent))
        return rows

    def _print_row(self, index: int, domain: str, sent: int) -> dict:
        with self.lock:
            rows = list(self.results[index])
        if domain == "clean" and not self.clean_top1:   # the unadapted model's (run 1)
            for r in rows:
                self.clean_top1.setdefault(r["photo"], r["results"][0]["class_index"])
        agree = [r["results"][0]["class_index"] == self.clean_top1.get(r["photo"]) for r in rows
                 if r["photo"] in self.clean_top1]
        last = rows[-1] if rows else {"adaptation_steps": 0, "bank_entries": 0}
        share = 100 * float(np.mean(agree)) if agree else float("nan")
        print(f"{domain:16s} {sent:5d} {len(rows):10d} {share:13.0f}% "
              f"{last['adaptation_steps']:11d} {last['bank_entries']:4d} "
              f"{_p50(rows, 'inference_ms'):12.1f} {_p50(rows, 'e2e_ms'):10.1f}", flush=True)
        return {"domain": domain, "agree": share}


def _p50(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows])) if rows else float("nan")


def _entries(response) -> int | None:
    import re
    match = re.search(r"(\d+) bank entr", response.message)
    return int(match.group(1)) if match else None
