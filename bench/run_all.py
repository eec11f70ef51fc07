"""Run every side-by-side benchmark in turn (`make bench`), each at low priority; tables go to stdout,
JSON to bench/results/. Pass names to run a subset: `python bench/run_all.py decode eval_throughput`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["decode", "gguf_formats", "eval_throughput", "startup", "train_throughput"]


def main(argv: list[str]) -> int:
    wanted = argv or ORDER
    unknown = [name for name in wanted if name not in ORDER]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ORDER)}")
        return 2
    failed = []
    for name in wanted:
        print(f"\n===== bench/{name}.py =====", flush=True)
        code = subprocess.run(["nice", "-n", "10", sys.executable, str(HERE / f"{name}.py")]).returncode
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
