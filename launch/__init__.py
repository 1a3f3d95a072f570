"""Command line, launch configs (accelerate YAML, DeepSpeed JSON, slurm) and the demo."""
