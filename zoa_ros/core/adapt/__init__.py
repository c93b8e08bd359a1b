"""Test-time adaptation methods (ZOA and baselines); create them through :mod:`.registry`.

Imports ``files``, ``runtime``, ``quant`` and ``model``; never ``data``, ``bank`` or ``eval``."""
