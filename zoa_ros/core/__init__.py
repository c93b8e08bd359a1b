"""Pure PyTorch/numpy core of zoa_ros; nothing under this package imports rclpy.

Rooms, lowest first; a room imports only from rooms before it (``test/test_layout.py``):

* ``files``: atomic writes, safetensors file helpers, shipped config files, image files, the
  bundled sample photos, the user's cache.
* ``runtime``: how the process runs: malloc settings, CPU affinity, threads, peak memory,
  classification first.
* ``quant``: fake quantization of timm classifiers.
* ``model``: the timm model, its weights, preprocessing, labels, feature taps, the model pack.
* ``data``: frame streams: image folders, corruptions, domain schedules, image messages, bags.
* ``adapt``: the test-time adaptation methods (ZOA and baselines).
* ``bank``: knowledge bank files and fleet merges.
* ``backend``: inference backends: the pack as an int8 ONNX QDQ graph, ONNX Runtime.
* ``engine`` (with ``controls``): classify, buffer, adapt, count costs.
* ``eval``: the continual benchmark, live replay scoring, and fleet replay's plan and summary.
"""
