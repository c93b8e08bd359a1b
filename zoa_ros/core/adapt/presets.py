"""Method hyperparameter presets per model family and quantization, from ``config/``."""

from __future__ import annotations

from pathlib import Path

import yaml


class PresetError(ValueError):
    """No preset file, or no preset for the requested family / quantization."""


def config_dir() -> Path:
    """The repository's ``config/`` (source checkout / editable install), else the ROS
    package's installed ``share/zoa_ros/config``."""
    local = Path(__file__).resolve().parents[3] / "config"
    if local.is_dir():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory("zoa_ros")) / "config"
    except Exception as e:   # not a ROS install, or package not found
        raise PresetError(f"no config folder at {local} and no installed zoa_ros share "
                          f"({e})") from e
    if not share.is_dir():
        raise PresetError(f"no config folder at {local} or {share}")
    return share


def load_preset(family: str, quant_name: str, method: str = "zoa") -> dict:
    """Hyperparameters of ``method`` for a ``layernorm``/``batchnorm`` model quantized as
    ``quant_name`` (``w8a8``, ``w6a6``, ``w4a4``, ``none``): defaults, then the family's
    defaults, then the family's entry for that quantization."""
    path = config_dir() / f"{method}_presets.yaml"
    if not path.is_file():
        raise PresetError(f"{path}: no presets for method {method!r}")
    with open(path) as f:
        table = yaml.safe_load(f) or {}
    families = {k: v for k, v in table.items() if k != "defaults"}
    if family not in families:
        raise PresetError(f"{path.name}: no preset for model family {family!r} "
                          f"(have {sorted(families)})")
    entry = families[family] or {}
    quants = sorted(k for k in entry if k != "defaults")
    key = quant_name.lower()
    if key not in entry:
        raise PresetError(f"{path.name}: no {family} preset for quantization {quant_name!r} "
                          f"(have {quants})")
    return {**(table.get("defaults") or {}), **(entry.get("defaults") or {}),
            **(entry[key] or {})}
