"""The workers' tests, run again and again beside busy loops: does anything in the lease, heartbeat or reaper
depend on a quiet machine? (issue 27: a grid job was "run by" two workers on a loaded CI run.)

    python benchmarks/workers_under_load.py [--runs 30] [--burners 1] [--tests tests/test_workers.py]

Each run is one pytest process over the tests; ``--burners`` processes spin on the CPU the whole time. It stops
at the first failure (its output is kept in results/workers_under_load-failure.txt) and writes
results/workers_under_load.json with every run's time and outcome.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--burners", type=int, default=1, help="busy-loop processes beside the tests")
    ap.add_argument("--tests", default="tests/test_workers.py")
    args = ap.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    runs = []
    try:
        for i in range(args.runs):
            t = time.time()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", args.tests],
                                  capture_output=True, text=True, cwd=ROOT)
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            runs.append({"run": i + 1, "seconds": round(time.time() - t, 1), "passed": proc.returncode == 0,
                         "summary": last})
            print(runs[-1], flush=True)
            if proc.returncode != 0:
                RESULTS.mkdir(parents=True, exist_ok=True)
                (RESULTS / "workers_under_load-failure.txt").write_text(proc.stdout[-20000:] + proc.stderr[-5000:])
                break
    finally:
        for b in burners:
            b.kill()
    passed = sum(r["passed"] for r in runs)
    write_result("workers_under_load", {"tests": args.tests, "burners": args.burners, "runs": runs,
                                        "passed_in_a_row": passed,  # it stops at the first failure
                                        "all_passed": passed == len(runs) == args.runs})
    return 0 if passed == len(runs) == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
