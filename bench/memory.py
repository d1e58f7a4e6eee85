"""Resident memory of the processes a bench started and of all their descendants, from /proc.

`MemoryWatch` samples, every half second on a thread of its own, each process of the trees
under the given roots (the API, each worker, and whatever they start: render processes,
uvicorn's children): its current RSS (`VmRSS`) and the kernel's high-water mark of it
(`VmHWM`), so a peak between two samples is not missed. A process that exits keeps what
was read of it. Linux only (no dependency on psutil, which only the embedded extra brings).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
EVERY = 0.5


@dataclass
class ProcessMemory:
    """What was read of one process, in MB: the first and last RSS, its RSS when `mark` was
    called (None if it started later), and its peak."""

    pid: int
    label: str
    first_mb: float
    last_mb: float
    peak_mb: float
    marked_mb: float | None = None

    @property
    def root(self) -> str:
        """The label of the root it is (or descends from): `api`, `worker-1`."""
        return self.label.split("/", 1)[0]

    @property
    def kind(self) -> str:
        """`root` for a root, else what the descendant runs (`render`, a program's name)."""
        if "/" not in self.label:
            return "root"
        return self.label.rsplit("/", 1)[1].split("[", 1)[0]


def parents() -> dict[int, int]:
    """Every process's parent pid."""
    found: dict[int, int] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (PROC / entry.name / "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        # The command name may hold spaces and parentheses: the fields follow its last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = int(fields[1])
    return found


def descendants(root: int, parent_of: dict[int, int]) -> list[int]:
    """The root's children, their children, and so on (not the root)."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return sorted(found)


def status_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) in MB; None when the process is gone (or is a zombie, which has none)."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    if len(values) < 2:
        return None
    return values["VmRSS"], values["VmHWM"]


def kind(pid: int) -> str:
    """A short name for a descendant: `render` for a render process, else its program."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [word.decode(errors="replace") for word in argv if word]
    if "app.templates.child" in words:
        return "render"
    if not words:
        return "process"
    return Path(words[0]).name


@dataclass
class MemoryWatch:
    """Samples the trees under `roots` (label → pid) until stopped."""

    roots: dict[str, int]
    every: float = EVERY
    processes: dict[int, ProcessMemory] = field(default_factory=dict)
    _mark: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> MemoryWatch:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def mark(self) -> None:
        """Note each process's RSS now (the start of what is measured)."""
        with self._lock:
            self._mark = True
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        parent_of = parents()
        with self._lock:
            for label, root in self.roots.items():
                self._read(root, label)
                for pid in descendants(root, parent_of):
                    self._read(pid, None, label)
            self._mark = False

    def _read(self, pid: int, label: str | None, root: str = "") -> None:
        found = status_mb(pid)
        if found is None:
            return
        rss, peak = found
        known = self.processes.get(pid)
        if known is None:
            name = label or f"{root}/{kind(pid)}[{pid}]"
            known = self.processes[pid] = ProcessMemory(pid, name, rss, rss, peak)
        known.last_mb = rss
        known.peak_mb = max(known.peak_mb, peak, rss)
        if self._mark:
            known.marked_mb = rss
