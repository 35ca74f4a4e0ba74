"""How long `textdiffusion --help` takes, in fresh processes: the command line must answer at once.

    python benchmarks/cli_help.py [--repeats 7]

Each command runs ``--repeats`` times in a new interpreter (``python -m textdiffusion ... --help``, the
package from this checkout); the median and the fastest wall time are printed, beside a bare ``python -c
pass`` for the interpreter's own start-up. The parser imports no torch (tests/test_layout.py checks that);
this measures what that buys. Timing lives here, not in a test: a shared machine makes any threshold flaky.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["train", "--help"], ["sample", "--help"], ["config", "--help"], ["mnist", "eval", "--help"])


def wall_times(argv: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    """Seconds for ``repeats`` fresh runs of ``python argv`` (output discarded; a failure stops the benchmark)."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        subprocess.run([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                       check=True)
        times.append(time.perf_counter() - tic)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="fresh processes per command (default: 7)")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    rows = [("python -c pass", wall_times(["-c", "pass"], args.repeats, env))]
    for command in COMMANDS:
        rows.append((f"textdiffusion {' '.join(command)}",
                     wall_times(["-m", "textdiffusion", *command], args.repeats, env)))
    print(f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}; {args.repeats} fresh processes each")
    for label, times in rows:
        print(f"{label:<36} median {statistics.median(times):.3f} s   fastest {min(times):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
