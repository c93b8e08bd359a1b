"""What ``zoa-ros evaluate`` and ``zoa-ros replay`` share: the method/mode/output/bank arguments,
and running :func:`zoa_ros.core.eval.evaluation.evaluate` into the JSON result, the report and the
printed summary."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from zoa_ros.core.data.stream import FrameStream, Segment
from zoa_ros.core.engine import MODES
from zoa_ros.core.eval.evaluation import evaluate
from zoa_ros.core.files.atomic import atomic_write_bytes
from zoa_ros.core.model.pack import ModelPack, library_versions
from zoa_ros.tools.backend_args import add_backend_arguments
from zoa_ros.tools.packs import add_pack_argument


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """--pack, --batch-size, --mode, --methods, --seed, --method-config, --device, --backend,
    --int8-model."""
    add_pack_argument(p)
    p.add_argument("--batch-size", type=int, default=64,
                   help="frames per adaptation step (batch mode: also per classified batch)")
    p.add_argument("--mode", choices=MODES, default="batch",
                   help="batch: classify a batch, then adapt on it (paper protocol); "
                        "streaming: classify frame by frame, adapt on the buffer every "
                        "batch-size frames")
    p.add_argument("--methods", type=comma_list, default=["none", "zoa"],
                   help="comma-separated methods, each on its own fresh model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method-config", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE",
                   help="method option (VALUE parsed as JSON, else a string); "
                        "METHOD.KEY=VALUE sets it for one method only")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    # The accuracy benchmark runs the torch reference unless told otherwise, so the commands in
    # docs/RESULTS.md reproduce their numbers; --backend onnxruntime measures the int8 runtime.
    add_backend_arguments(p, None, "torch; with replay --live the node's inference.backend")


BANK_HELP = """\
Knowledge banks (the persistent per-domain memory of methods that keep one: ZOA). --load-bank
loads one bank file into every such method before the first frame; methods without a bank
ignore it. A file that cannot be used (another model pack, another layer layout, a damaged or
newer file) stops the run before the first frame (exit status 2). --save-bank writes the bank
after the last frame: with one method that has a bank, to FILE; with several, each to FILE with
the method name inserted before the suffix (run.zoabank -> run.zoa.zoabank) unless
--save-bank-method names the one to save to FILE. The result JSON's config records both
(config.bank_files: the loaded file and which methods loaded it, the saved files)."""


def add_bank_arguments(p: argparse.ArgumentParser) -> None:
    """--load-bank, --save-bank, --save-bank-method."""
    g = p.add_argument_group("knowledge bank", BANK_HELP)
    g.add_argument("--load-bank", metavar="FILE",
                   help="knowledge bank loaded into every method with a bank before the stream")
    g.add_argument("--save-bank", metavar="FILE",
                   help="write the bank of the method with a bank here after the stream "
                        "(several such methods: FILE with the method name before the suffix)")
    g.add_argument("--save-bank-method", metavar="NAME",
                   help="with several methods that have a bank: save only NAME's, to FILE")


def check_bank_arguments(args: argparse.Namespace, pack: ModelPack) -> None:
    """Refuse a --load-bank file that is not a bank of ``pack`` before any data is read (the
    layer layout is checked when it is loaded into the method)."""
    if args.save_bank_method is not None:
        if args.save_bank is None:
            raise ValueError("--save-bank-method needs --save-bank FILE")
        if args.save_bank_method not in args.methods:
            raise ValueError(f"--save-bank-method {args.save_bank_method!r} is not one of "
                             f"--methods {','.join(args.methods)}")
    if args.load_bank is None:
        return
    from zoa_ros.core.bank.file import BankError, read
    _, meta = read(args.load_bank)
    if meta.get("pack_fingerprint") != pack.fingerprint:
        raise BankError(
            f"{args.load_bank}: bank belongs to model pack "
            f"{str(meta.get('pack_fingerprint'))[:12]}, not to --pack {args.pack} "
            f"({pack.fingerprint[:12]})")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """--json, --report."""
    p.add_argument("--json", required=True, help="result file to write")
    p.add_argument("--report", help="folder for report.md and the plot (accuracy.png; "
                                    "agreement.png for unlabelled streams)")


def run_evaluation(args: argparse.Namespace, pack: ModelPack, stream: FrameStream,
                   tool: str, provenance: dict[str, str] | None = None) -> dict:
    """Evaluate ``args.methods`` over ``stream``; write ``args.json`` (and ``args.report``),
    print the summary; returns the result. ``provenance`` (robot, mission) labels the bank
    entries the run stores, beside the writing tool."""
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    configs = parse_method_config(args.method_config, args.methods)
    bar = sys.stderr.isatty() or bool(os.environ.get("ZOA_PROGRESS"))
    result = evaluate(pack, stream, args.methods, mode=args.mode, batch_size=args.batch_size,
                      seed=args.seed, method_configs=configs, device=args.device,
                      progress=bar, on_segment=None if bar else SegmentLog(),
                      load_bank=args.load_bank, save_bank=args.save_bank,
                      save_bank_method=args.save_bank_method,
                      bank_provenance={"writer": f"zoa-ros {tool}", **(provenance or {})},
                      backend=args.backend or "torch", int8_model=args.int8_model,
                      stats_every=getattr(args, "stats_every", None))
    for method, path in result["bank_files"]["saved"].items():
        entries = result["methods"][method]["bank"]["entries"]
        print(f"saved {method}'s knowledge bank ({entries} entries) to {path}", file=sys.stderr)
    return write_outputs(args, pack, stream, tool, result, configs)


class SegmentLog:
    """Without a progress bar (a log file, a CI job), one stderr line per finished segment:
    round, domain, frames, each method's accuracy and the time since the start, so a run of an
    hour shows its results as they come."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, segment: Segment, accs: dict[str, float | None]) -> None:
        scores = "  ".join(f"{name} {'n/a' if acc is None else f'{acc:.1f}'}"
                           for name, acc in accs.items())
        print(f"[{time.monotonic() - self.start:7.0f} s] round {segment.round} "
              f"{segment.name} ({len(segment)} frames): {scores}", file=sys.stderr, flush=True)


def write_outputs(args: argparse.Namespace, pack: ModelPack, stream: FrameStream, tool: str,
                  result: dict, method_configs: dict[str, dict]) -> dict:
    """Add the ``config`` section to ``result``, write ``args.json`` (and ``args.report``),
    print the summary; returns the result."""
    result["config"] = {
        "tool": tool,
        **{k: v for k, v in vars(args).items() if k not in ("run", "command")},
        "method_configs": method_configs,
        "stream": stream.describe(),
        "pack_info": {"model": pack.spec.name, "weights": pack.spec.weights,
                      "quant": pack.quant.name, "fingerprint": pack.fingerprint},
        "versions": library_versions(),
    }
    if "bank_files" in result:
        result["config"]["bank_files"] = result.pop("bank_files")
    atomic_write_bytes(args.json, json.dumps(result, indent=1, default=str).encode())
    if args.report:
        from zoa_ros.tools.report import write_report
        write_report(result, args.report)
    print_summary(result)
    return result


def parse_method_config(items: list[str], methods: list[str]) -> dict[str, dict]:
    """``["lr=1e-4", "zoa.spsa_c=0.02"]`` -> per-method option dicts."""
    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--method-config {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        scope, dot, name = key.partition(".")
        targets = [scope] if dot and scope in methods else methods
        for m in targets:
            out[m][name if dot and scope in methods else key] = value
    return out


def comma_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def print_summary(result: dict) -> None:
    labelled = result.get("labelled", True)
    first = "mean acc" if labelled else "agree %"
    print(f"{'method':12s} {first:>9s} {'entropy':>8s} {'fwd/frame':>10s} {'ms/frame':>9s} "
          f"{'peak MB':>8s} {'domains':>8s}")
    for name, r in result["methods"].items():
        c = r["costs"]
        value = r["mean_acc"] if labelled else r["mean_agreement"]
        print(f"{name:12s} {_num(value, 9, 2)} {_num(r['mean_entropy'], 8, 3)} "
              f"{_num(c['forward_per_frame'], 10, 3)} {_num(c['ms_per_frame'], 9, 2)} "
              f"{_num(c['peak_mb'], 8, 1)} {r['domain_changes']:8d}")
    run = result["run"]
    print(f"{run['frames']} frames per method in {run['wall_s']:.1f} s "
          f"({run['frames_per_s']:.1f} frames/s; reading the stream {run['stream_s']:.1f} s)")


def _num(value: float | None, width: int, digits: int) -> str:
    """``value`` right-aligned in ``width`` with ``digits`` decimals; ``-`` for None."""
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"
