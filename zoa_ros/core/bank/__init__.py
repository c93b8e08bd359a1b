"""Knowledge bank files: save and load ZOA's bank with its provenance, refusing bad files
(``file``), and merging a fleet's banks of one pack (``merge``). Imports ``adapt``, ``model``
and ``files``."""
