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

`file_creation` times what the filesystem of a folder takes to create a
file, alone and in one process per core at once: on an ext4 without a
journal it ranges from a few hundredths of a millisecond to over one,
depending on how many files were deleted in the minutes before, and weighs
on every benchmark that stores files (see bench/README.md).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def _create(folder: Path, files: int = 500, start_at: float = 0.0) -> float:
    """Create `files` files of 4 KB in `folder` (from the time `start_at`);
    return the milliseconds each took."""
    folder.mkdir(parents=True)
    time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    for n in range(files):
        fd = os.open(folder / f"{n}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, _BLOCK[:4096])
        os.close(fd)
    return (time.perf_counter() - start) / files * 1000


def file_creation(folder: Path, files: int = 500) -> dict:
    """Return the milliseconds a new file of 4 KB takes in `folder`, in one
    process alone and in one per core at once ("alone", "at_once": their
    median). The files are left there: deleting them would slow the next
    creations."""
    cores = os.cpu_count() or 1
    alone = _create(folder / "alone", files)
    start_at = time.time() + 0.2  # all begin together, once started
    with multiprocessing.Pool(cores) as pool:
        each = pool.starmap(_create, [(folder / f"at-once-{n}", files, start_at)
                                      for n in range(cores)])
    return {"alone": alone, "at_once": statistics.median(each)}


def main() -> int:
    result = speedup()
    print(f"{result['processes']} processes at once did {result['speedup']:.2f}x "
          "the work of one")
    with tempfile.TemporaryDirectory(prefix="cores-") as tmp:
        made = file_creation(Path(tmp))
    print(f"creating a file in {tempfile.gettempdir()}: {made['alone']:.2f} ms alone, "
          f"{made['at_once']:.2f} ms with {result['processes']} processes at once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
