"""Training machinery shared by the stages: run folders, checkpoints, metrics, seeded sampling."""
