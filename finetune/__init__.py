"""Classification stage: heads, probes, baselines, fine-tune loop, evaluation, export."""
