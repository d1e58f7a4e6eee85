"""A render process: `python -m app.templates.child MEMORY_MB CPU_SLACK_SECONDS`.

Started by RenderPool (app/templates/pool.py) with a fresh interpreter (no fork of a
process that runs threads or an event loop). It limits itself before it takes any work:

- RLIMIT_AS to MEMORY_MB: a render that builds too much gets MemoryError (a render error)
  or the process dies, never the API or the worker;
- RLIMIT_CPU, moved before each compile and job to the CPU time used so far plus
  CPU_SLACK_SECONDS: if the parent could not kill a stalled render (it died itself), the
  kernel does, within seconds;
- no core files.

Then it answers batches and checks (app/templates/isolation.py) read from stdin, on the real stdout;
anything else that prints goes to stderr. It exits at the end of its stdin: its parent
closed the pipe, or died.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import sys
import time
from typing import BinaryIO

from app.templates.isolation import (
    HEADER,
    MAX_FRAME,
    Checked,
    CheckSources,
    Compiled,
    OutOfBudget,
    Ready,
    Refused,
    RenderBatch,
    Rendered,
    Reply,
    decode_request,
    encode,
    frame,
)
from app.templates.rendering import (
    RenderFailed,
    clean_message,
    prepare,
    render,
    source_errors,
)


def _limit_memory(megabytes: int) -> None:
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _limit_cpu(slack: float) -> None:
    """Let the next step use `slack` more seconds of CPU; the kernel stops it past that."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + slack)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _read(stream: BinaryIO) -> bytes | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes")
    body = stream.read(size)
    return body if len(body) == size else None


def _send(out: BinaryIO, reply: Reply) -> None:
    out.write(frame(encode(reply)))
    out.flush()


def _ms(since: float) -> float:
    # Wall time: a render never waits, so it is its CPU time (and the CPU clock here adds up
    # many short jobs to too little).
    return (time.perf_counter() - since) * 1000


def serve(batch: RenderBatch, out: BinaryIO, slack: float) -> None:
    """Compile what the batch needs, then answer each job in order."""
    began = time.perf_counter()
    _limit_cpu(slack)
    for job in batch.jobs:
        prepare(batch.template, job.channel, locale=job.locale, fallback=job.fallback)
    spent = _ms(began)
    _send(out, Compiled(ms=spent))
    for job in batch.jobs:
        if batch.budget_ms is not None and spent >= batch.budget_ms:
            _send(out, OutOfBudget())
            return
        _limit_cpu(slack)
        began = time.perf_counter()
        reply: Reply
        try:
            content = render(
                batch.template,
                job.channel,
                locale=job.locale,
                fallback=job.fallback,
                data=batch.data,
                recipient=job.recipient,
            )
            reply = Rendered(content=content, ms=_ms(began))
        except RenderFailed as failed:
            reply = Refused(
                field=failed.field, message=str(failed), ms=_ms(began), line=failed.line
            )
        except Exception as error:  # MemoryError and the like: this job's failure only
            message = clean_message(f"{type(error).__name__}: {error}")
            reply = Refused(field=job.channel, message=message, ms=_ms(began))
        spent += reply.ms
        _send(out, reply)


def check(request: CheckSources, out: BinaryIO, slack: float) -> None:
    """Compile every source of a template about to be saved; answer what failed."""
    began = time.perf_counter()
    _limit_cpu(slack)
    errors = [
        (f"{where}.{channel}.{field}", message)
        for where, content in request.sources.items()
        for channel, fields in content.items()
        for field, message in source_errors(channel, fields)
    ]
    _send(out, Checked(errors=errors, ms=_ms(began)))


def main() -> None:
    memory_mb, slack = int(sys.argv[1]), float(sys.argv[2])
    # Ctrl+C reaches the whole process group: the parent stops its children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Frames go to the real stdout only; a stray print lands on stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _limit_memory(memory_mb)
    stream = sys.stdin.buffer
    try:
        _send(out, Ready(pid=os.getpid()))
        while (body := _read(stream)) is not None:
            request = decode_request(body)
            if isinstance(request, CheckSources):
                check(request, out, slack)
            else:
                serve(request, out, slack)
    except BrokenPipeError:
        pass  # the parent closed the pool (or died) while this one was busy


if __name__ == "__main__":
    main()
