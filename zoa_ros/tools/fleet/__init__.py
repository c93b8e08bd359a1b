"""``zoa-ros fleet``: many recordings in one command, one report. The command and its phases
(``command``), one phase driven through an executor (``runner``), the local process pool and
Ray (``executors``), what runs in a worker (``worker``), the results folder (``store``) and the
report (``report``). The pure parts - manifest, plan, keys, aggregation - are in
:mod:`zoa_ros.core.eval.fleet`."""

from zoa_ros.tools.fleet.command import add_parser, run

__all__ = ["add_parser", "run"]
