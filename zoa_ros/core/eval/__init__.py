"""Scoring adaptation: the continual benchmark over a frame stream, methods side by side
(``evaluation``), what adapting costs or gains against not adapting (``harm``), and scoring
a live node's answers to a replayed recording (``live_replay``). The top room: it may import
every other room and the engine."""
