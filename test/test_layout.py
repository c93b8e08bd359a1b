"""The rooms of zoa_ros.core import only from rooms below them, and core never imports rclpy."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "zoa_ros" / "core"
# Lowest first, as zoa_ros/core/__init__.py lists them; engine and controls share a level.
ROOMS = ["files", "runtime", "quant", "model", "data", "adapt", "bank", "backend", "engine",
         "eval"]
LEVEL = {room: i for i, room in enumerate(ROOMS)} | {"controls": ROOMS.index("engine")}


def room_of(module: str) -> str:
    """``zoa_ros.core.model.pack`` -> ``model``; ``zoa_ros.core.engine`` -> ``engine``."""
    return module.split(".")[2]


def imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (``from zoa_ros.core import x`` names x too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "zoa_ros.core":
                names += [f"zoa_ros.core.{a.name}" for a in node.names]
    return names


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if p.name != "__init__.py" or p.parent != CORE)


def test_every_core_module_lives_in_a_known_room():
    for path in core_files():
        room = path.relative_to(CORE).parts[0].removesuffix(".py")
        assert room in LEVEL, f"{path}: core/{room} is not a room of zoa_ros/core/__init__.py"


def test_no_import_runs_from_a_lower_room_to_a_higher_one():
    wrong = []
    for path in core_files():
        room = path.relative_to(CORE).parts[0].removesuffix(".py")
        for name in imports(path):
            if name.startswith("zoa_ros.core."):
                target = room_of(name)
                if LEVEL[target] > LEVEL[room]:
                    wrong.append(f"{path.relative_to(CORE)} ({room}) imports {name} ({target})")
            elif name.split(".")[0] == "rclpy" or name.startswith(("zoa_ros.ros", "zoa_ros.tools")):
                wrong.append(f"{path.relative_to(CORE)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from zoa_ros.core.eval.evaluation import evaluate\nimport rclpy\n")
    assert imports(bad) == ["zoa_ros.core.eval.evaluation", "rclpy"]
    assert LEVEL[room_of("zoa_ros.core.eval.evaluation")] > LEVEL["model"]
