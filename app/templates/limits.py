"""The limits every tenant template lives within (documented in docs/api/templates.md).

They bound what one template can cost Herald: its stored size, and per channel render the
time it runs, the output it produces, and the intermediate text it may build on the way.
"""

from __future__ import annotations

#: Template source per version: the JSON of `content` and `locales` together (422 above).
MAX_SOURCE_BYTES = 64 * 1024

#: Rendered output per channel: the UTF-8 bytes of all its rendered fields together.
MAX_OUTPUT_BYTES = 256 * 1024

#: Wall-clock time one channel's render may take.
RENDER_TIMEOUT_SECONDS = 0.100

#: Characters of intermediate text (filter results, `~`, `+`, `*`, `%`, method results) one
#: channel's render may build; stops memory blow-ups that finish inside the time limit.
MAX_WORK_CHARS = 4 * 1024 * 1024

#: Largest `range()` or sequence (`[x] * n`, `batch`/`slice` fill) a template may build.
MAX_ITEMS = 100_000

#: Largest integer a template may compute with `*` or `**`, in bits.
MAX_INT_BITS = 8192

#: A render still running this long after RENDER_TIMEOUT_SECONDS has its process killed (the
#: in-process checks stop most runaway templates at the limit; this is for one C call that
#: holds on past it).
RENDER_KILL_GRACE_SECONDS = 0.100

#: Compiling the sources one batch of renders needs (up to MAX_SOURCE_BYTES each).
COMPILE_TIMEOUT_SECONDS = 1.0
