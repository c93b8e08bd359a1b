"""zoa_ros: quantized camera-frame classification with zeroth-order test-time adaptation."""

__version__ = "0.1.0"
