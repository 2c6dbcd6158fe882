"""The hostile-input fuzzer at a larger size: `python bench/fuzz.py --examples 20000`.

Starts the same cluster as tests/test_fuzz.py (a real scheduler, simulated agents, runs of two
users and an admin), sends `--examples` hypothesis-built requests to every RPC, and prints the
calls per RPC and status, the rate, and every problem found (a status outside the allowed set, a
dead scheduler, a broken invariant of the SQLite state). Exits 1 when anything was found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import invariants  # noqa: E402
from test_fuzz import fuzz, start_cluster, stop_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None, help="a hypothesis seed; default: the derandomized draws")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridlab-fuzz-") as root:
        target = start_cluster(Path(root))
        try:
            began = time.perf_counter()
            fuzzer = fuzz(target, args.examples, seed=args.seed)
            elapsed = time.perf_counter() - began
            fuzzer.checkpoint()
            broken = invariants.check(target.db)
            alive = target.alive()
        finally:
            stop_cluster(target)
    print(fuzzer.report())
    print(f"{fuzzer.examples} examples in {elapsed:.1f}s ({fuzzer.examples / elapsed:.0f}/s)")
    print(f"scheduler alive: {alive}; invariants broken at the end: {len(broken)}; problems: {len(fuzzer.failures)}")
    for problem in fuzzer.failures[:100]:
        print("  " + problem)
    return 0 if alive and not fuzzer.failures and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
