"""Inference backends: the pack as an int8 ONNX QDQ graph (``export``, ``fold``, ``graph``)
and the runtimes that classify with it. Imports quant, model and adapt (never engine or eval);
the engine classifies through a backend."""
