"""``zoa-ros bench fuzz``: hostile camera messages into a live ``zoa_node``, over DDS.

For each transport (``raw``: sensor_msgs/Image on ``image``; ``compressed``: CompressedImage on
``image/compressed``) a ``zoa_node`` runs as its own process on an isolated local ROS graph
with the shipped config, adaptation on, reliable input QoS (so every message reaches its
callback and can be accounted for) and ``max_pixels`` small enough that frames just over it
can be sent. This process warms it up with valid frames of every valid case until the node has
taken ``--warmup-steps`` adaptation steps, then ``--warmup-messages`` hostile messages (its
memory then holds what classifying, adapting and refusing take), reads its resident memory,
then publishes
``--messages`` (split between the transports) from :mod:`zoa_ros.ros.hostile_messages` at
``--rate`` Hz, plus a share of truncated CDR payloads that the middleware itself must drop.

Afterwards it waits until the node's /diagnostics counters account for every message, checks
the node still classifies a valid frame, stops it with SIGINT and prints per transport:
messages sent, received by the node, classified, counted malformed, dropped (overwritten by a
newer frame before the model got to them: counted too), unaccounted, node alive, RSS before,
after and at its peak. Verdicts: no crash, every delivered message classified or counted,
nothing classified beyond what the cases allow, RSS after within 5 % of before.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoa_ros.tools.live_graph import add_live_arguments, isolated_graph, write_json
from zoa_ros.tools.packs import add_pack_argument, resolve_pack

TRANSPORTS = ("raw", "compressed")
RSS_TOLERANCE = 0.05      # RSS after the messages within 5 % of before
WARMUP_FRAMES = 96        # three adaptation steps at the shipped interval
SETTLE_TIMEOUT_S = 120.0


def add_parser(bsub: argparse._SubParsersAction) -> None:

    p = bsub.add_parser("fuzz", help="hostile camera messages into a live zoa_node",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pack_argument(p)
    p.add_argument("--messages", type=int, default=2000,
                   help="hostile messages in all, split evenly between the transports")
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help="comma-separated: raw, compressed (default: both)")
    p.add_argument("--rate", type=float, default=50.0, help="messages per second")
    p.add_argument("--max-pixels", type=int, default=1_000_000,
                   help="the node's max_pixels in this run (default %(default)s: small "
                        "enough to send frames just over it)")
    p.add_argument("--cdr-share", type=float, default=0.02,
                   help="share of messages sent as truncated CDR bytes (the middleware drops "
                        "them before the node; default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=10,
                   help="first send valid frames until the node has taken this many "
                        "adaptation steps (default %(default)s)")
    p.add_argument("--warmup-messages", type=int, default=1000,
                   help="hostile messages per transport before RSS is read, so that it holds "
                        "what the mix needs (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    add_live_arguments(p, "out/bench_fuzz", 151)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoa_ros.tools.bench_node import parse_params

    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not transports or any(t not in TRANSPORTS for t in transports):
        raise ValueError(f"--transports: choose from {', '.join(TRANSPORTS)}")
    if args.messages < len(transports) or args.rate <= 0 or not 0 <= args.cdr_share < 1:
        raise ValueError("--messages must be >= the number of transports, --rate > 0, "
                         "--cdr-share in [0, 1)")
    extra = parse_params(args.param)
    pack = resolve_pack(args.pack).resolve()
    out = Path(args.out)
    with isolated_graph(out, args.domain_id) as env:
        try:
            results = []
            for i, transport in enumerate(transports):
                count = args.messages // len(transports) + (i < args.messages % len(transports))
                results.append(fuzz_transport(transport, count, args, pack, extra, env, out))
        except RuntimeError as e:
            print(f"zoa-ros bench fuzz: {e}")
            return 1
    report = {"settings": {"pack": str(pack), "messages": args.messages, "rate_hz": args.rate,
                           "max_pixels": args.max_pixels, "cdr_share": args.cdr_share,
                           "seed": args.seed, "params_overrides": {k: str(v) for k, v in
                                                                   extra.items()}},
              "transports": results, "passed": all(r["passed"] for r in results)}
    print(format_report(report), flush=True)
    write_json(args.json, report)
    return 0 if report["passed"] else 1


def fuzz_transport(transport: str, count: int, args: argparse.Namespace, pack: Path,
                   extra: dict[str, Any], env: dict[str, str], out: Path) -> dict:
    """One node, ``count`` hostile messages on ``transport``; the counts and verdicts."""
    from sensor_msgs.msg import CompressedImage, Image

    from zoa_ros.ros.hostile_messages import CLASSIFIED, EITHER, MALFORMED, HostileMessages
    from zoa_ros.ros.node_process import NodeProcess
    from zoa_ros.ros.node_watch import RELIABLE, NodeWatch, process_memory

    log = out / f"node_{transport}.log"
    log.unlink(missing_ok=True)
    overrides = {"pack": pack, "transport": transport, "qos.reliability": "reliable",
                 "qos.depth": 100, "max_pixels": args.max_pixels,
                 "knowledge.autoload": False, "knowledge.autosave": False,
                 "knowledge.bank_path": (out / "fuzz.zoabank").resolve(),
                 "diagnostics.period_s": 0.25, **extra}
    print(f"{transport}: starting zoa_node ...", flush=True)
    node = NodeProcess(overrides, env, log)
    watch = NodeWatch(f"zoa_fuzz_{transport}")
    kind = CompressedImage if transport == "compressed" else Image
    topic = "image/compressed" if transport == "compressed" else "image"
    publisher = watch.node.create_publisher(kind, topic, RELIABLE)
    messages = HostileMessages(transport, args.seed, args.max_pixels)
    try:
        watch.wait_for(publisher, node)
        valid = [h for h in messages.take(20 * len(messages.cases))
                 if h.expect == CLASSIFIED][:WARMUP_FRAMES]
        print(f"{transport}: warm-up, valid frames until {args.warmup_steps} adaptation steps, "
              f"then {args.warmup_messages} hostile messages ...", flush=True)
        sent = _adapt(publisher, watch, node, [h.message for h in valid], args)
        warmup = _payloads(messages, args.warmup_messages, args.cdr_share)
        _send(publisher, warmup.payloads, args.rate)
        before = _settled(watch, node, ({k: 0.0 for k in COUNTERS}, sent + warmup.delivered))
        if not before or before["classified"] == 0:
            raise RuntimeError(f"the node classified none of {sent} valid warm-up "
                               f"frames; see {log}")
        memory_before = process_memory(node.proc.pid)
        answers_before = watch.answers
        print(f"{transport}: {count} hostile messages at {args.rate:g} Hz ...", flush=True)
        batch = _payloads(messages, count, args.cdr_share)
        started = time.monotonic()
        trace: list[tuple[int, float]] = []
        _send(publisher, batch.payloads, args.rate, node, trace)
        seconds = time.monotonic() - started
        after = _settled(watch, node, (before, batch.delivered))
        if after:   # the answers go out just after the counters count them
            watch.wait_answers(answers_before + int(after["classified"] - before["classified"]),
                               10.0)
        memory_after = process_memory(node.proc.pid) if node.alive() else {}
        alive = node.alive()
        still = alive and _still_classifies(publisher, watch, valid[0].message)
    finally:
        watch.close()
        code = node.stop()
    got = {k: int(after[k] - before[k]) for k in before} if after else {}
    expected = batch.expected
    result = {"transport": transport, "sent": count, "seconds": round(seconds, 1),
              "cdr_garbage": batch.cdr, "delivered": batch.delivered,
              "expected": {"classified": expected[CLASSIFIED], "malformed": expected[MALFORMED],
                           "either": expected[EITHER]},
              "node": got, "answers": watch.answers - answers_before - int(still),
              "alive": alive, "classifies_after": still, "exit_code": code,
              "memory_before": memory_before, "memory_after": memory_after,
              "rss_trace": trace, "warmup_messages": args.warmup_messages,
              "cases": dict(sorted(batch.cases.items())), "log": str(log)}
    result["verdicts"] = verdicts(result)
    result["passed"] = all(result["verdicts"].values())
    return result


def _adapt(publisher: Any, watch: Any, node: Any, valid: list[Any],
           args: argparse.Namespace) -> int:
    """Send the valid frames round and round until the node has taken ``--warmup-steps``
    adaptation steps (their activations are the largest part of its memory) or 10 minutes
    passed; returns the frames sent."""
    from zoa_ros.ros.node_watch import number

    sent = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and node.alive():
        _send(publisher, valid, args.rate)
        sent += len(valid)
        if args.warmup_steps <= 0 or number(watch.counters(), "adaptation_steps") >= \
                args.warmup_steps:
            break
    return sent


@dataclass
class _Batch:
    """Messages to send (message objects, or bytes for truncated CDR), what the cases expect
    of the well-formed ones, and how many of each case."""

    payloads: list[Any] = field(default_factory=list)
    expected: Counter = field(default_factory=Counter)
    cases: Counter = field(default_factory=Counter)
    cdr: int = 0                 # truncated CDR payloads among them

    @property
    def delivered(self) -> int:
        """Messages the middleware certainly delivers (most truncated CDR it drops)."""
        return len(self.payloads) - self.cdr


def _payloads(messages: Any, count: int, cdr_share: float) -> _Batch:
    """The next ``count`` hostile messages, a ``cdr_share`` of them cut short as CDR bytes."""
    from rclpy.serialization import serialize_message

    batch = _Batch()
    rng = messages.rng
    for hostile in messages.take(count):
        if rng.random() < cdr_share:
            raw = serialize_message(hostile.message)
            batch.payloads.append(raw[:int(rng.integers(4, len(raw)))])
            batch.cdr += 1
            batch.cases[f"{messages.transport}/truncated CDR"] += 1
        else:
            batch.payloads.append(hostile.message)
            batch.expected[hostile.expect] += 1
            batch.cases[hostile.case] += 1
    return batch


def _send(publisher: Any, payloads: list[Any], rate: float, node: Any = None,
          trace: list | None = None) -> None:
    """Publish ``payloads`` at ``rate`` Hz (no bursts after a stall); stop if ``node`` died;
    ``trace`` gets (messages sent, the node's RSS in MB) every 500 messages."""
    from zoa_ros.ros.node_watch import process_memory

    period = 1.0 / rate
    tick = time.monotonic()
    for i, payload in enumerate(payloads):
        publisher.publish(payload)
        if node is not None and i % 100 == 0:
            if not node.alive():
                return
            if trace is not None and i % 500 == 0:
                trace.append((i, round(process_memory(node.proc.pid)["rss_mb"], 1)))
        tick += period
        now = time.monotonic()
        if now - tick > period:
            tick = now
        time.sleep(max(0.0, tick - now))


COUNTERS = {"received": "camera.received", "classified": "frames_classified",
            "malformed": "malformed_messages", "dropped": "dropped_frames",
            "inference_errors": "inference_errors", "adaptation_steps": "adaptation_steps"}


def _settled(watch: Any, node: Any, expect: tuple[dict, int] | None) -> dict[str, float]:
    """The node's counters once nothing is in flight: the same two readings in a row (and,
    with ``expect`` = (counters before, messages delivered), every delivered message received
    and classified, counted malformed or dropped); the last reading after the timeout."""
    from zoa_ros.ros.node_watch import number

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last: dict[str, float] = {}
    while time.monotonic() < deadline and node.alive():
        values = watch.counters()
        now = {k: number(values, key) for k, key in COUNTERS.items()} if values else {}
        done = now and now == last
        if done and expect is not None:
            before, delivered = expect
            received = now["received"] - before["received"]
            handled = sum(now[k] - before[k] for k in ("classified", "malformed", "dropped"))
            done = received >= delivered and handled >= received
        if done:
            return now
        last = now
        time.sleep(0.3)
    return last


def _still_classifies(publisher: Any, watch: Any, message: Any) -> bool:
    """The node answers one more valid frame."""
    answers = watch.answers
    message.header.frame_id = "after_fuzz"
    publisher.publish(message)
    return watch.wait_answers(answers + 1, 30.0)


def verdicts(r: dict) -> dict[str, bool]:
    """The targets, each True when met."""
    node, exp = r["node"], dict(r["expected"])
    accounted = bool(node) and r["delivered"] <= node["received"] <= r["sent"] and (
        node["classified"] + node["malformed"] + node["dropped"] == node["received"])
    if node:   # a truncated CDR payload the middleware still delivered: either outcome
        exp["either"] += max(0, node["received"] - r["delivered"])
    before, after = r["memory_before"]["rss_mb"], r["memory_after"].get("rss_mb")
    return {
        "no crash": r["alive"] and r["classifies_after"] and r["exit_code"] == 0,
        "every delivered message classified or counted": accounted,
        "nothing classified that must be refused": bool(node) and (
            node["classified"] <= exp["classified"] + exp["either"]),
        "nothing refused that must be classified": bool(node) and (
            node["malformed"] <= exp["malformed"] + exp["either"]),
        "every answer published": bool(node) and r["answers"] == node["classified"],
        "RSS after within 5 % of before": after is not None and (
            after <= before * (1 + RSS_TOLERANCE)),
    }


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [f"zoa-ros bench fuzz: {s['messages']} hostile messages at {s['rate_hz']:g} Hz, "
             f"max_pixels {s['max_pixels']}, seed {s['seed']}; pack {s['pack']}", "",
             f"{'transport':10s} {'sent':>6s} {'cdr':>4s} {'recvd':>6s} {'classif':>7s} "
             f"{'malform':>7s} {'dropped':>7s} {'unacct':>6s} {'alive':>5s} "
             f"{'RSS before':>10s} {'after':>7s} {'change':>7s} {'peak':>7s}"]
    for r in report["transports"]:
        n = r["node"] or {k: 0 for k in COUNTERS}
        before = r["memory_before"]["rss_mb"]
        after = r["memory_after"].get("rss_mb", float("nan"))
        peak = r["memory_after"].get("peak_rss_mb", float("nan"))
        unaccounted = n["received"] - (n["classified"] + n["malformed"] + n["dropped"])
        lines.append(
            f"{r['transport']:10s} {r['sent']:6d} {r['cdr_garbage']:4d} {n['received']:6d} "
            f"{n['classified']:7d} {n['malformed']:7d} {n['dropped']:7d} {unaccounted:6d} "
            f"{'yes' if r['alive'] else 'NO':>5s} {before:8.0f}MB {after:5.0f}MB "
            f"{100 * (after - before) / before:+6.1f}% {peak:5.0f}MB")
    lines.append("")
    for r in report["transports"]:
        e = r["expected"]
        lines.append(f"{r['transport']}: cases expect {e['classified']} classified, "
                     f"{e['malformed']} malformed, {e['either']} either; inference errors "
                     f"{r['node'].get('inference_errors', 'n/a')}; answers {r['answers']}; "
                     f"exit code {r['exit_code']}")
        for name, ok in r["verdicts"].items():
            lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}")
    lines.append("")
    lines.append("all targets met" if report["passed"] else "TARGETS MISSED (see FAIL above)")
    return "\n".join(lines)
