"""Training machinery: the one loop (``trainer``), its backend (``runtime``: torch / DDP / DeepSpeed),
checkpoints, the DeepSpeed config arithmetic (``dist_config``), optimizer groups, LR schedule and the
recipe arithmetic (batch, LR rule, epochs <-> steps)."""
