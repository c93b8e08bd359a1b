"""Test-time adaptation methods (ZOA and baselines); create them through :mod:`.registry`."""
