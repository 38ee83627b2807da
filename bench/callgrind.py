"""Counting a process's instructions with valgrind's callgrind, in windows the benchmark opens.

The process runs under `callgrind_command` with counting off; `callgrind_window(pid, True)`
turns it on, `callgrind_window(pid, False)` turns it off and dumps what was counted into the
next part file (`<file>.<pid>.<part>`), zeroing the counts; `last_callgrind_dump` finds that
file and `callgrind_totals` reads its count. Used by `bench/load.py --callgrind` (a server over
each step's steady window) and `bench/instructions.py` (a replayed call).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def callgrind_command(cmd: list[str], out_file: Path) -> list[str]:
    """`cmd` under valgrind's callgrind, counting nothing until `callgrind_control -i on`."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}.%p", *cmd]


def callgrind_window(pid: int, on: bool) -> None:
    """Start (`on`) or stop counting instructions in a server under callgrind; stopping dumps
    what was counted (and zeroes the counts) into the next part file."""
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True, capture_output=True, timeout=60)
    if not on:
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=60)


def callgrind_totals(text: str) -> int:
    """The instructions counted in one callgrind dump (its `totals:` line, else `summary:`)."""
    for key in ("totals:", "summary:"):
        for line in text.splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    raise ValueError("no totals in the callgrind dump")


def last_callgrind_dump(out_file: Path, pid: int) -> Path:
    """The newest part (`<file>.<pid>.<part>`) that callgrind wrote for `pid`."""
    suffixes = ((f.name.rsplit(".", 1)[1], f) for f in out_file.parent.glob(f"{out_file.name}.{pid}.*"))
    parts = [(int(part), f) for part, f in suffixes if part.isdigit()]
    if not parts:
        raise FileNotFoundError(f"no callgrind dump for pid {pid} beside {out_file}")
    return max(parts)[1]
