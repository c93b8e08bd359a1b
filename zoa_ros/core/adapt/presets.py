"""Method hyperparameter presets per model family and quantization, from ``config/``."""

from __future__ import annotations

import yaml

from zoa_ros.core.files.config_files import config_path


class PresetError(ValueError):
    """No preset file, or no preset for the requested family / quantization."""



def load_preset(family: str, quant_name: str, method: str = "zoa") -> dict:
    """Hyperparameters of ``method`` for a ``layernorm``/``batchnorm`` model quantized as
    ``quant_name`` (``w8a8``, ``w6a6``, ``w4a4``, ``none``): defaults, then the family's
    defaults, then the family's entry for that quantization."""
    path = config_path(f"{method}_presets.yaml")
    if path is None:
        raise PresetError(f"no {method}_presets.yaml in config/: no presets for method "
                          f"{method!r}")
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
