"""``zoa-ros replay``: the continual benchmark over a rosbag2 recording (MCAP or sqlite3) - every
frame of one camera topic in recording order, methods side by side, the same JSON and report as
``zoa-ros evaluate``. Labels from a label topic or a sidecar CSV; without labels the report
shows what needs none (agreement with the unadapted model, prediction entropy, domain changes
detected, costs).

``--live`` publishes the frames into a running ``zoa_node`` instead - one it starts with
``--pack`` and the shipped config (sim time, camera topic remapped to the bag's), or with
``--node-running`` the node already on this ROS graph - at the recorded pace times ``--rate``,
with ``/clock``, and scores the node's ``classification_json`` answers: the same report for the
node's method, plus frames published / answered / dropped, latency, and the comparison with the
same method run offline on the same frames. The node keeps only its newest frame: when it is
slower than the replay it drops frames; ``--rate`` < 1 gives it time."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from zoa_ros.core.data.bags.stream import AUTO, BagStream
from zoa_ros.core.eval.live_replay import (
    QOS_CHOICES,
    decoded_frames,
    live_result,
    match_answers,
    offline_answers,
)
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.tools.evaluation_cli import (
    add_bank_arguments,
    add_method_arguments,
    add_output_arguments,
    check_bank_arguments,
    parse_method_config,
    run_evaluation,
    write_outputs,
)
from zoa_ros.tools.packs import resolve_pack

DEFAULT_METHODS = ["none", "zoa"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="continual benchmark over a rosbag2 recording",
                       description=__doc__)
    p.add_argument("bag", help="rosbag2 folder (or a single .mcap / .db3 file)")
    p.add_argument("--image-topic",
                   help="sensor_msgs/Image or CompressedImage topic (default: the bag's only "
                        "image topic)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--label-topic",
                        help="std_msgs/String JSON labels matched by header stamp, or "
                             "std_msgs/Int32 matched by order (default: the topic named "
                             "'labels' if there is one)")
    labels.add_argument("--labels", metavar="CSV",
                        help="sidecar labels: header row stamp_ns,class_index[,domain]")
    labels.add_argument("--no-labels", action="store_true",
                        help="ignore any labels: the unsupervised report")
    p.add_argument("--limit", type=int, help="only the first N usable frames")
    add_method_arguments(p)
    add_output_arguments(p)
    add_bank_arguments(p)
    live = p.add_argument_group(
        "live replay", "--live: into a zoa_node; --methods (one method), --seed, --device, "
        "--backend and --int8-model "
        "set the started node's; --batch-size is the curve's step; --mode, "
        "--method-config and the knowledge bank options do not apply (use --node-param, "
        "e.g. knowledge.bank_path)")
    live.add_argument("--live", action="store_true",
                      help="publish the bag into zoa_node and score its answers")
    live.add_argument("--node-running", action="store_true",
                      help="use the node already running on the current ROS graph "
                           "(ROS_DOMAIN_ID ...) instead of starting one")
    live.add_argument("--node", default="/zoa_node",
                      help="fully qualified name of the node (default %(default)s)")
    live.add_argument("--rate", type=float, default=1.0,
                      help="pace: the recorded rate times this (0.5 = half speed)")
    live.add_argument("--qos", choices=QOS_CHOICES, default="auto",
                      help="reliability of the published frames; auto: what the node's "
                           "subscription asks for")
    live.add_argument("--node-param", nargs="+", action="extend", default=[],
                      metavar="NAME=VALUE", help="parameter of the started node")
    live.add_argument("--domain-id", type=int,
                      help="ROS_DOMAIN_ID of the started node's isolated graph (default: "
                           "from the process id)")
    live.add_argument("--settle", type=float, default=5.0,
                      help="after the last frame, wait until this long passes without an "
                           "answer (seconds)")
    live.add_argument("--start-timeout", type=float, default=120.0,
                      help="seconds to wait for the node to become active")
    live.add_argument("--no-offline", action="store_true",
                      help="skip running the same method offline for the comparison")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be >= 1")
    args.pack = str(resolve_pack(args.pack))
    if args.live:
        return _run_live(args)
    if args.node_running or args.node_param:
        raise ValueError("--node-running and --node-param need --live")
    parse_method_config(args.method_config, args.methods)  # fail before reading the bag
    replay_offline(args, ModelPack.load(args.pack))
    return 0


def replay_offline(args: argparse.Namespace, pack: ModelPack,
                   provenance: dict[str, str] | None = None) -> dict:
    """The offline replay of ``args.bag`` (the arguments of ``zoa-ros replay``) with ``pack``
    already loaded: writes ``args.json`` (and the report), prints the summary, returns the
    result. ``provenance`` (e.g. robot, mission) labels the bank entries stored during the run;
    ``zoa-ros fleet`` runs every bag through here."""
    check_bank_arguments(args, pack)
    pre = Preprocessor(pack.data_config)
    label_topic = None if args.no_labels else (args.label_topic or AUTO)
    stream = BagStream(args.bag, image_topic=args.image_topic, label_topic=label_topic,
                       labels_csv=args.labels, crop=pre.crop,
                       input_hw=tuple(pre.input_size[1:]), limit=args.limit)
    if not stream.labelled and "none" not in args.methods:
        args.methods = ["none", *args.methods]
        print("no labels: adding method 'none' as the reference for prediction agreement",
              file=sys.stderr)
    result = run_evaluation(args, pack, stream, "replay", provenance)
    info = result["config"]["stream"]
    if info["malformed"] or info["unlabelled_skipped"]:
        reasons = "; ".join(f"{n} x {r}" for r, n in info["malformed_reasons"].items())
        print(f"skipped {info['malformed']} malformed messages{': ' + reasons if reasons else ''}"
              f" and {info['unlabelled_skipped']} frames without a label", file=sys.stderr)
    return result


def _run_live(args: argparse.Namespace) -> int:
    """``--live``: play into the node, score its answers, compare with the offline engine."""
    if args.method_config:
        raise ValueError("--method-config does not apply with --live: set the node's "
                         "parameters with --node-param NAME=VALUE")
    if args.load_bank or args.save_bank or args.save_bank_method:
        raise ValueError("--load-bank/--save-bank do not apply with --live: the node loads and "
                         "saves its bank itself (--node-param knowledge.bank_path=FILE "
                         "knowledge.autoload=true)")
    if len(args.methods) > 1 and args.methods != DEFAULT_METHODS:
        raise ValueError("--live scores the node's one method: give --methods one method")
    if not args.rate > 0 or (args.limit is not None and args.limit < 1):
        raise ValueError("--rate must be > 0 and --limit >= 1")
    method = args.methods[0] if len(args.methods) == 1 else None
    node_params = dict(_key_value(item) for item in args.node_param)
    from zoa_ros.ros import bag_player  # rclpy: only for --live
    from zoa_ros.ros.node import ZoaNode
    from zoa_ros.ros.params import BY_NAME, SPECS

    pack = ModelPack.load(args.pack)
    label_topic = None if args.no_labels else (args.label_topic or AUTO)
    stream = BagStream(args.bag, image_topic=args.image_topic, label_topic=label_topic,
                       labels_csv=args.labels, limit=args.limit)
    topic = stream.image_topic
    launch = None
    if not args.node_running:
        overrides: dict[str, object] = {
            "pack": Path(args.pack).resolve(), "use_sim_time": True, "seed": args.seed,
            "device": args.device, "knowledge.autoload": False, "knowledge.autosave": False}
        if args.backend is not None:
            overrides["inference.backend"] = args.backend
        if args.int8_model:
            overrides["inference.int8_model"] = Path(args.int8_model).resolve()
        if method is not None:
            overrides["adaptation.method"] = method
        if stream.kind == "compressed":
            overrides["transport"] = "compressed"
        overrides.update(node_params)
        remaps = {"image/compressed" if stream.kind == "compressed" else "image": topic}
        log = Path(args.json).with_suffix(".node.log")
        domain = args.domain_id if args.domain_id is not None else 100 + os.getpid() % 100
        launch = bag_player.NodeLaunch(overrides, remaps, log, domain)
    elif node_params:
        raise ValueError("--node-param sets the parameters of a node this replay starts; "
                         "not with --node-running")

    def outgoing() -> Iterator[tuple[int, int, int, bytes]]:  # index, stamp, log time, CDR
        for i, (planned, raw) in enumerate(stream.raw_frames()):
            yield i, planned.stamp, raw.log_time_ns, raw.rawdata

    print(f"live replay of {stream.total_frames} frames on {topic} at {args.rate:g}x into "
          f"{args.node}{' (starting it)' if launch else ''} ...", file=sys.stderr, flush=True)
    try:
        played = bag_player.play_into_node(
            outgoing, topic=topic, msgtype=stream.image_type, node=args.node, launch=launch,
            rate=args.rate, qos=args.qos, settle_s=args.settle,
            start_timeout=args.start_timeout, parameter_names=[s.name for s in SPECS])
    except (RuntimeError, TimeoutError) as e:
        print(f"zoa-ros replay: live replay failed: {e}", file=sys.stderr)
        return 1
    params = {n: BY_NAME[n].default if v is None and n in BY_NAME else v
              for n, v in played.parameters.items()}
    node_method = str(params["adaptation.method"])
    if method is not None and method != node_method:
        print(f"note: the node runs method {node_method!r}, not {method!r}", file=sys.stderr)
    published = len(played.sent_at)
    frames = stream.planned_frames()[:published]
    answers, unmatched = match_answers(frames, played.answers, played.sent_at)
    config = ZoaNode.engine_config(params.get, len(pack.labels))
    offline = None
    if not args.no_offline:
        print("running the same method offline for the comparison ...", file=sys.stderr,
              flush=True)
        offline = offline_answers(pack, config, decoded_frames(stream))
    counters = played.counters
    live = {"node": args.node, "started_node": launch is not None, "method": node_method,
            "topic": topic, "qos": played.qos, "rate": args.rate, "clock": played.clock,
            "node_counters": counters,
            "lost_in_transport": published - counters["received"] if counters else None,
            "node_exit": played.node_exit, "node_log": str(launch.log) if launch else None,
            "device": params.get("device"), "node_parameters": params}
    result = live_result(frames, stream.plan(), node_method, answers, published, unmatched,
                         args.batch_size, played.wall_s, live, offline)
    args.methods, args.mode = [node_method], "streaming"
    write_outputs(args, pack, stream, "replay --live", result,
                  {node_method: dict(config.method_config)})
    _print_live(result["live"])
    if not answers:
        print(f"zoa-ros replay: the node answered none of the {published} frames",
              file=sys.stderr)
        return 1
    return 0


def _print_live(live: dict) -> None:
    counters = live["node_counters"]
    print(f"live: {live['frames_published']} frames published, {live['frames_answered']} "
          f"answered, {live['frames_dropped']} dropped" + (
              f" (node: {counters['dropped']} replaced before classification, "
              f"{counters['malformed']} malformed; {live['lost_in_transport']} not received)"
              if counters else ""))
    for key in ("inference", "end_to_end"):
        lat = live["latency_ms"][key]
        if lat:
            print(f"  {key.replace('_', ' ')} latency ms: p50 {lat['p50']:.1f}, "
                  f"p99 {lat['p99']:.1f}")
    offline = live.get("offline")
    if offline:
        print(f"  offline engine: same prediction on {offline['same']} of "
              f"{offline['compared']} answered frames")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--node-param {item!r}: expected NAME=VALUE")
    return key, value
