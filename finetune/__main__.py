"""Fine-tune / probe an encoder or train a baseline classifier.

    python -m finetune --config configs/finetune/synth_vit.yaml --init runs/pretrain data.shards=DIR
    accelerate launch --config_file launch/accelerate/cpu-2proc.yaml -m finetune --config ... key=value
"""

import sys

from finetune import main as finetune_main
from pretrain.cli_util import run_command

sys.exit(run_command(finetune_main, sys.argv[1:], "python -m finetune"))
