"""`python -m bench.profiled OUT ARGS…`: run `herald ARGS…` under cProfile, counting CPU time.

A wall-clock profile of a process on a loaded machine charges whichever function was
running when the process was descheduled; this one measures the process's own CPU time
(CLOCK_PROCESS_CPUTIME_ID), so its shares hold however busy the machine is. The profile is
written to OUT when the command returns (a worker does on SIGTERM).
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time


def main() -> None:
    output, args = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile(time.process_time)
    sys.argv = ["herald", *args]
    # uvicorn raises the SIGTERM it caught again once it has shut down: let that end the
    # run through the `finally` below rather than kill the process before the dump.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    from app.cli import main as herald

    profiler.enable()
    try:
        herald(standalone_mode=False)
    finally:
        profiler.disable()
        profiler.dump_stats(output)


if __name__ == "__main__":
    main()
