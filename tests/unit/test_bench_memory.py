"""The resident memory of a process tree, read from /proc (bench/memory.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.memory import MemoryWatch


def test_the_memory_of_a_process_tree_is_read_from_proc() -> None:
    # A parent whose child holds 64 MB until its input closes.
    child = "import sys; x = b'x' * (64 << 20); print('ready', flush=True); sys.stdin.read()"
    parent = (
        "import subprocess, sys; "
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}], stdin=sys.stdin); c.wait()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        assert process.stdout.readline() == b"ready\n"
        watch = MemoryWatch({"parent": process.pid})
        watch.sample()
        watch.mark()
    finally:
        process.stdin.close()
        process.wait()
    found = sorted(watch.processes.values(), key=lambda p: p.label)
    program = Path(sys.executable).name
    assert [p.kind for p in found] == ["root", program]
    assert found[1].label.startswith(f"parent/{program}[") and found[1].root == "parent"
    assert found[1].peak_mb >= 64 and found[1].marked_mb is not None
    watch.sample()  # both gone: what was read stays
    assert len(watch.processes) == 2
