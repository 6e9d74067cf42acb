"""How much more work this machine does with every core busy than with one.

    .venv/bin/python bench/cores.py

Runs the same CPU-bound Python work (sha256 and a little arithmetic, about
half a second) in one process, then in as many processes at once as there
are cores, three times each, and prints the median speedup: the work done
per second with all cores busy over the work done by one process. On a
virtual machine whose cores share physical ones, or a busy host, it is
well below the number of cores; no "N at once" ratio of the benchmarks
(four DICOM associations against one, two workers against one loop) can
pass it.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import statistics
import sys
import time

_BLOCK = bytes(1 << 16)


def _spin(rounds: int) -> None:
    digest = hashlib.sha256()
    total = 0
    for _ in range(rounds):
        digest.update(_BLOCK)
        total += sum(range(300))


def _timed(processes: int, rounds: int) -> float:
    workers = [multiprocessing.Process(target=_spin, args=(rounds,)) for _ in range(processes)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def speedup(seconds: float = 0.5, repeat: int = 3) -> dict:
    """Return {"processes": cores, "speedup": work rate with all busy / with one}."""
    cores = os.cpu_count() or 1
    start = time.perf_counter()
    _spin(200)
    rounds = max(1, int(200 * seconds / (time.perf_counter() - start)))
    ratios = []
    for _ in range(repeat):
        one = _timed(1, rounds)
        ratios.append(cores * one / _timed(cores, rounds))
    return {"processes": cores, "speedup": statistics.median(ratios)}


def main() -> int:
    result = speedup()
    print(f"{result['processes']} processes at once did {result['speedup']:.2f}x "
          "the work of one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
