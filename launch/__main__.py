"""``python -m launch COMMAND ...`` is the same as ``tubelet COMMAND ...``."""

import sys

from launch.cli import main

sys.exit(main())
