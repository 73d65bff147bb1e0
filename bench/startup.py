"""Start-up cost of the CLI, as ratios to the floor of `python -c "import typer"`.

Run with the interpreter that has maider installed:  python bench/startup.py [--runs N]
Target (issue "Foundation"): `maider --help` <= 1.6x the floor with all providers installed.
Prints medians in milliseconds; exits non-zero only if a command fails, never on a slow figure
(timing targets live here, not in unit tests, because shared CI machines are noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "python -c 'import typer' (floor)": [sys.executable, "-c", "import typer"],
    "maider --help": [sys.executable, "-m", "maider", "--help"],
    "maider providers": [sys.executable, "-m", "maider", "providers"],
    "maider list-types": [sys.executable, "-m", "maider", "list-types"],
    "maider up --dry-run": [sys.executable, "-m", "maider", "up", "--dry-run"],
}
TARGET = 1.6


def median_ms(cmd: list[str], runs: int, env: dict[str, str]) -> float:
    subprocess.run(cmd, capture_output=True, env=env, check=True)  # warm-up: .pyc files, disk cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, MAIDER_CONFIG=f"{home}/config.toml", MAIDER_DATA_DIR=f"{home}/data")
        results = {name: median_ms(cmd, args.runs, env) for name, cmd in COMMANDS.items()}
    floor = next(iter(results.values()))
    print(f"{'command':36} {'median ms':>10} {'x floor':>8}")
    for name, ms in results.items():
        print(f"{name:36} {ms:10.1f} {ms / floor:8.2f}")
    ratio = results["maider --help"] / floor
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"\n`maider --help` is {ratio:.2f}x the typer floor: {verdict} the {TARGET}x target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
