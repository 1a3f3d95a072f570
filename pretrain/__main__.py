"""Pretrain a masked autoencoder.

    python -m pretrain --config configs/pretrain/synth_tiny.yaml data.shards=DIR run.dir=runs/x
    accelerate launch --config_file launch/accelerate/cpu-2proc.yaml -m pretrain --config ... key=value
"""

import sys

from pretrain import main as pretrain_main
from pretrain.cli_util import run_command

sys.exit(run_command(pretrain_main, sys.argv[1:], "python -m pretrain"))
