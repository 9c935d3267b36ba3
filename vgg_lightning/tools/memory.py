"""Peak memory of a command and its child processes, split into anonymous and file-backed pages (Linux).

``/usr/bin/time -v`` reports one peak resident size, which counts the pages of a memory-mapped cache the process
has touched: those are the page cache's, shared by every process and dropped by the kernel when memory is short.
What a data set must not make grow is the anonymous memory (heap, tensors). This samples ``/proc/PID/status`` of
the command and all its descendants (decode workers, DDP ranks) every ``--interval`` seconds and prints the peak of
each kind, summed over the processes alive at the same moment::

    python -m vgg_lightning.tools.memory -- python -m vgg_lightning fit --data.dataset folder ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile, RssShmem of one process, in bytes (empty when it is gone)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return values


def measure(command: list[str], interval: float = 0.1) -> tuple[int, dict[str, int]]:
    """Run ``command``; (its exit status, peak bytes of each kind summed over its process tree)."""
    proc = subprocess.Popen(command)
    peaks = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0, "total": 0}
    while proc.poll() is None:
        now = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        for pid in _tree(proc.pid):
            for key, value in _status(pid).items():
                now[key] += value
        now["total"] = sum(now.values())
        for key, value in now.items():
            peaks[key] = max(peaks[key], value)
        time.sleep(interval)
    return proc.returncode, peaks


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_lightning.tools.memory",
        description="Peak anonymous and file-backed memory of a command and its child processes (Linux /proc).",
    )
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples (default 0.1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    opts = parser.parse_args(args)
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        parser.error("give the command to measure after --")
    if not Path("/proc/self/status").exists():
        parser.error("this reads /proc/PID/status: Linux only")
    t0 = time.perf_counter()
    status, peaks = measure(command, opts.interval)
    gb = 1e9
    print(
        f"peak memory of the command and its children ({time.perf_counter() - t0:.1f} s, exit {status}):"
        f" anonymous {peaks['RssAnon'] / gb:.2f} GB, file-backed (mapped files, page cache) {peaks['RssFile'] / gb:.2f}"
        f" GB, shared memory {peaks['RssShmem'] / gb:.2f} GB, all resident {peaks['total'] / gb:.2f} GB",
        file=sys.stderr,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
