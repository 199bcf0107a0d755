"""config.json of the backbones the planner knows offline (music.models.shapes.COMMITTED_CONFIGS)."""
