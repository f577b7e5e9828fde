"""Training: the recipe, the epoch loop, checkpoints and the fold runner."""
