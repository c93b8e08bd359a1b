"""How the process runs a model: glibc malloc settings (``allocator``), CPU affinity
(``cpus``) and per-thread torch/OpenMP setup (``threads``), peak tensor memory of a block of
code (``memory``) and classification first, the adapting thread waiting while a frame is
classified (``prediction_first``). Imports only ``files``."""
