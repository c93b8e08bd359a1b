"""The model and everything that travels with it: the timm factory and its weights
(``factory``, ``efficientnet_lite_weights``), preprocessing from the pretrained cfg
(``preprocess``), labels, feature taps (``features``), BatchNorm statistics modes
(``norm_mode``), top-k results (``prediction``), the model pack with its calibration
(``pack``, ``calibration``, ``shift_reference``: what clean input looks like to the model) and
the default pack built into the cache (``default_pack``).
Imports ``files``, ``runtime`` and ``quant``; never ``data``."""
