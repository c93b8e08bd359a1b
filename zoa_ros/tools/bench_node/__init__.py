"""``zoa-ros bench node``: end-to-end latency and dropped frames of a live ``zoa_node``, next to
the bare model's own latency, all measured in one run on this machine.

``zoa_node`` runs as its own process with the shipped ``config/zoa.yaml`` and the Fast DDS
large-image profile; this process publishes rgb8 frames (the photos bundled with scikit-image,
resized; ``--domain NAME@S`` corrupts them, e.g. ``contrast@5``) with sensor-data QoS at ``--rate``
Hz and subscribes to ``classification_json``.
Latency = the arrival of a result here minus the header stamp of the frame it answers (matched
by the stamp in the JSON; one clock). The stamp is taken just before the prebuilt message goes
out, and the arrival is the result's DDS reception time in this process (rmw_fastrtps reports
it), so neither this process's copying of pixels nor the wait for its own executor to take the
result is counted against the node; the latter is reported apart (``results_wake_ms``). A
frame never answered counts as dropped; the node's ``/diagnostics`` counters split drops into
frames overwritten in its newest-frame slot (the model was busy) and frames that never reached
its callback.

Conditions: every size x adaptation off / on (one node process per setting: ``adaptation.enabled``
false / true, everything else from the config, so "on" is the default ZOA method with the
config's interval; with ZOA's shift gate it adapts only on input the gate takes as shifted, so
clean frames time the closed gate and ``--domain`` a shifted camera times the adapting path:
per-frame hooks, early and regular steps; the report gives the frames it adapted on). Each
condition: the model's latency (``Engine.predict`` on one frame of that
size, the node's per-frame computation, in this process while no frames flow, from one worker
thread with ``inference.threads`` CPU threads and every other thread of this process on one, as
the node runs its inference (see :mod:`zoa_ros.core.runtime.threads`)), a warm-up stream that is not
counted, a pause until the node has answered and published fresh counters, then the measured
stream in ``--blocks`` slices, with the model's runs shared out before, between and after
them: the speed of a shared machine drifts by a fifth or more within minutes, and measured only
before and after the stream the model saw other minutes than the node.

The model runs twice in each share: once per camera period (``1 / --rate``, idle in between,
the duty cycle of the node's inference thread) and back to back; their ratio is printed (a CPU
that idles between frames may compute each one slower than a CPU kept busy: power states,
caches, and on a virtual machine the hypervisor's scheduling; docs/lab/node-latency.md §4.7).

With adaptation off, the model also runs *alongside* the stream: after each of the node's
answers, on the frame that answer was for, while the node waits for its next frame, and only
when it is expected to end before that frame is due (as long as its last run took). It sees the
machine within one camera period of the node, so the drift between shares drops out. The target
then compares the two over the same moments: each run against the node's answer to the next
frame (not to the frame before it, whose early answer made room for the run: that would pick the
node's lucky frames). This is the reference for the p50 target where the model ran after at
least a quarter of the answers (``model_reference`` in the JSON); otherwise (a machine too slow
for the rate), or with ``--no-model-alongside``, all of the node's answers are held against the
shares once per camera period. With adaptation on it does not run: it would take the idle CPU
that the node's adaptation step runs on. Both the node (``inference_cpu_ms`` in its results) and
the model here also report each frame's CPU time on the computing thread, which tells whether
the node's inference is slower because it waits or because it computes slower. Targets: at p50
the node adds <= 10 % to the model (node p50 / the reference's p50, adaptation off) and
adaptation in the background raises p99 by <= 50 % (p99 on / p99 off). Each of the two ratios
comes with a 95 % bootstrap interval (the p50 one resampling the pairs alongside), which says
whether its verdict would hold in another run of the same length on the same machine.

Last, the same streams go to :mod:`zoa_ros.ros.relay_node`, which answers every frame without a
model (same QoS, same Fast DDS profile, the same pixel read and result message): its latency
is the transport floor any Python node pays here, printed next to the time the node adds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoa_ros.tools.bench_node.alongside import frames_at
from zoa_ros.tools.bench_node.report import format_report
from zoa_ros.tools.bench_node.session import Bench
from zoa_ros.tools.live_graph import add_live_arguments, isolated_graph, write_json
from zoa_ros.tools.packs import add_pack_argument, resolve_pack


def add_parser(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("node", help="end-to-end latency and drops of a live zoa_node",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pack_argument(p)
    p.add_argument("--quant", default="w8a8", choices=("none", "w8a8", "w6a6", "w4a4"),
                   help="quantization of the default pack (without --pack)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per condition")
    p.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds per condition")
    p.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    p.add_argument("--sizes", default="224x224,640x480", help="WxH,... rgb8 frame sizes")
    p.add_argument("--frames-source", default="photos",
                   help="'photos' (the scikit-image sample photos) or an image folder")
    p.add_argument("--domain", default="clean",
                   help="what the camera shows: 'clean', or CORRUPTION@SEVERITY (e.g. "
                        "contrast@5) to time the node while its shift gate adapts")
    p.add_argument("--model-runs", type=int, default=100,
                   help="Engine.predict calls per condition for the model's latency")
    p.add_argument("--blocks", type=int, default=4,
                   help="stream each condition in this many slices, with a share of the "
                        "model's runs before, between and after them, so that the model is "
                        "measured across the same minutes as the node")
    p.add_argument("--model-alongside", action=argparse.BooleanOptionalAction, default=True,
                   help="with adaptation off, also run the model after the node's answers "
                        "while it waits for its next frame: the target's reference where it "
                        "ran after at least a quarter of them (default: on)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"),
                   help="the node's inference.backend (and the model measured beside it); "
                        "default: config/zoa.yaml's")
    add_live_arguments(p, "out/bench_node", 201)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes)
    extra = parse_params(args.param)
    if args.backend is not None:
        extra.setdefault("inference.backend", args.backend)
    if (args.seconds <= 0 or args.rate <= 0 or args.warmup < 0 or args.blocks < 1
            or args.model_runs < args.blocks + 1):
        raise ValueError("--seconds and --rate must be > 0, --warmup >= 0, --blocks >= 1, "
                         "--model-runs >= blocks + 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pack_path = resolve_pack(args.pack, args.quant)
    if not pack_path.is_file():
        raise FileNotFoundError(f"no such pack: {pack_path}")
    frames = {size: frames_at(args.frames_source, size, args.domain) for size in sizes}
    with isolated_graph(out, args.domain_id) as env:
        try:
            report = Bench(args, out, pack_path.resolve(), frames, extra, env).run()
        except RuntimeError as e:
            print(f"zoa-ros bench node: {e}")
            return 1
    print(format_report(report), flush=True)
    write_json(args.json, report)
    return 0


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """``"224x224,640x480"`` -> [(224, 224), (640, 480)] as (width, height)."""
    sizes = []
    for item in spec.split(","):
        w, sep, h = item.strip().lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ValueError(f"bad size {item!r}: expected WIDTHxHEIGHT, e.g. 640x480")
        sizes.append((int(w), int(h)))
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["adaptation.min_period_s:=0.5"]`` -> {"adaptation.min_period_s": 0.5} (YAML values)."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name.strip():
            raise ValueError(f"bad --param {item!r}: expected NAME:=VALUE")
        out[name.strip()] = yaml.safe_load(value)
    return out
