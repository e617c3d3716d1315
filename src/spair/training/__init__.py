"""Training: the trainer, schedules, checkpoints and presets."""
