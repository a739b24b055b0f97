"""Ray Train stage: the per-worker loops and the trainer built from the config."""
