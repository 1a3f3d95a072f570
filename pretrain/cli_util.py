"""Shared command runner: every ``tubelet`` command (and ``python -m pretrain|finetune``) runs here.

The policy a user meets on every command:

- ``--help`` shows each option's default;
- ``key=value`` config overrides may stand anywhere among the options;
- a bad input, path or config ends with **one line** on stderr naming the cause, and a non-zero
  exit (2: usage or config, 1: the run failed; 130: interrupted) — no traceback, unless
  ``--debug`` (anywhere on the command line) or ``TUBELET_DEBUG=1`` asks for one.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

DEBUG_ENV = "TUBELET_DEBUG"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Module docstrings keep their layout; options with a default show it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, "", [], argparse.SUPPRESS) or "default" in text.lower() \
                or not action.option_strings:
            return text
        return (text + " " if text else "") + "(default: %(default)s)"


def add_alias(parser: argparse.ArgumentParser, action: argparse.Action, *aliases: str) -> argparse.Action:
    """Old flag names that keep working for ``action`` without showing in ``--help``."""
    for a in aliases:
        if a in parser._option_string_actions:
            raise ValueError(f"flag {a} is taken")
        parser._option_string_actions[a] = action
    return action


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; ``OSError`` as ``'<what>: <path>'``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.strerror}: {e.filename}"
    else:
        msg = str(e).strip()
        if isinstance(e, KeyError) and len(e.args) == 1:
            msg = f"missing key {e.args[0]!r}"
    parts = [p.strip() for p in msg.splitlines() if p.strip()]
    return "; ".join(parts) or type(e).__name__


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``(debug?, argv without --debug)``."""
    env = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    return env or "--debug" in argv, [a for a in argv if a != "--debug"]


def build_parser(module: ModuleType, prog: str, fallback_help: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or fallback_help).strip(),
                                     formatter_class=HelpFormatter,
                                     epilog=f"--debug (or {DEBUG_ENV}=1) shows the traceback of an error")
    module.add_arguments(parser)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options and positionals (``key=value`` overrides) in any order."""
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:                     # parsers intermixed parsing cannot handle (REMAINDER, ...)
        return parser.parse_args(argv)


def run_command(module: ModuleType, argv: list[str], prog: str, fallback_help: str = "") -> int:
    """Parse ``argv`` with ``module.add_arguments`` and call ``module.run(args)`` under the policy above."""
    from pretrain.config import ConfigError, UsageError

    debug, argv = debug_requested(list(argv))
    args = parse(build_parser(module, prog, fallback_help), argv)
    try:
        rc = module.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except ConfigError as e:
        if debug:
            raise
        label = "usage error" if isinstance(e, UsageError) else "config error"   # a flag, or a config key
        print(f"{prog}: {label}: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # noqa: BLE001 — the one place that turns any failure into one line
        if debug:
            raise
        print(f"{prog}: error: {one_line(e)} [{type(e).__name__}; --debug shows the traceback]",
              file=sys.stderr, flush=True)
        return 1
    return int(rc or 0)
