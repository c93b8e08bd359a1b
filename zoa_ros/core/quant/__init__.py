"""Post-training fake quantization (WxAy) of timm classifiers. Imports nothing else from core."""

from zoa_ros.core.quant.model import (
    PRESETS,
    QuantConfig,
    calibrate,
    load_quant_state,
    quant_state,
    quantize_model,
)

__all__ = ["PRESETS", "QuantConfig", "calibrate", "load_quant_state", "quant_state",
           "quantize_model"]
