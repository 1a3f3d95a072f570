"""Run a speed benchmark from ``benchmarks/`` (each prints a ratio against a peer measured in the same run).

    tubelet bench loader --videos 16 --clips 160          # clips/s/core vs a VideoMAE-style loader
    tubelet bench pretrain_step --repeats 7               # step time vs transformers' VideoMAEForPreTraining

Results are recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def add_arguments(p) -> None:
    p.add_argument("name", help=f"benchmark to run: {', '.join(_available()) or '(none found)'}")
    p.add_argument("args", nargs="...", help="arguments passed to the benchmark (see its --help)")


def run(args) -> int:
    if not BENCH_DIR.is_dir():
        print(f"tubelet bench: the benchmarks ship with the source, not the installed package ({BENCH_DIR} does not "
              f"exist): run it from a checkout (git clone ...; pip install -e .)", file=sys.stderr)
        return 2
    script = BENCH_DIR / f"{args.name}.py"
    if not script.is_file():
        print(f"tubelet bench: no benchmark {args.name!r} in {BENCH_DIR} (have: {', '.join(_available())})",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0
