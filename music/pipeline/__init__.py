"""Running the pipeline: the notebook runner, dvc repro, profiles, publishing, freshness, the planner, data/."""
