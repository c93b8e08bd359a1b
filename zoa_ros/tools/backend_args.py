"""``--backend`` / ``--int8-model``: what classifies, for the subcommands that run an engine."""

from __future__ import annotations

import argparse

from zoa_ros.core.backend.choose import BACKENDS

BACKEND_HELP = ("what classifies: torch (the fake-quantized simulation, the accuracy "
                "reference), onnxruntime (the pack's int8 export on ONNX Runtime; streaming "
                "mode, methods none/norm/zoa) or auto (onnxruntime where it works, else torch "
                "with a warning saying why)")


def add_backend_arguments(p: argparse.ArgumentParser, default: str | None = "auto",
                          default_help: str | None = None) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help=f"{BACKEND_HELP} (default: {default_help or default})")
    p.add_argument("--int8-model", metavar="FILE",
                   help="the pack's int8 export (zoa-ros export); refused unless made from "
                        "this pack; default: export it at start (a few seconds)")
