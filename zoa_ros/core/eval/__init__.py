"""Scoring adaptation: the continual benchmark over a frame stream, methods side by side
(``evaluation``), what adapting costs or gains against not adapting (``harm``), scoring a
live node's answers to a replayed recording (``live_replay``), and the pure parts of fleet
replay - many recordings, robots, missions, one summary (``fleet``). The top room: it may import
every other room and the engine."""
