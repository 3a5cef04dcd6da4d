"""Training: the step loop (`loop.train`), its setup, batch sources, the learner,
metric sink, checkpoints and data-parallel followers."""
