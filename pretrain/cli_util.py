"""Shared command runner: build a module's argparse parser, run it, turn config errors into exit 2."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType


def run_command(module: ModuleType, argv: list[str], prog: str, fallback_help: str = "") -> int:
    """Parse ``argv`` with ``module.add_arguments`` and call ``module.run(args)``."""
    from pretrain.config import ConfigError

    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or fallback_help).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        rc = module.run(args)
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)
