"""Fleet replay's pure parts: which recordings a fleet run replays and as which robot and mission
(``manifest``), in what order with which knowledge bank (``plan``: per-robot chains), how a
finished replay is recognised again (``keys``: content hashes of bag, pack, configuration and
loaded bank), and how per-bag results add up to per-robot and fleet-wide numbers, the harm table
against no adaptation and the hold-out transfer number (``aggregate``). The command, the
executors and the report are in :mod:`zoa_ros.tools.fleet`."""
