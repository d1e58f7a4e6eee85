"""The meter and the size checks behind the template sandbox (app/templates/sandbox.py).

A render runs inside `metered()`: a deadline, checked by `tick()` at every loop step, call,
filter and guarded operator, and a budget of intermediate text, which `reserve()` consults
*before* an operation whose result size the template controls, and `charged()` draws down
after each string is built. Outside `metered()` (compiling at save time) only the size
pre-checks apply, against the whole budget.

Containers have a *weight* (`weight()`): about how many characters `str()` of them would
be, each element counted as often as it is reached. `{% set a = [a, a] %}` doubles the
weight of `a` while costing nothing to build, and one C call over the result (`==`, `in`,
`sort`, `str()`, hashing a tuple key) then runs for a time exponential in the template's
size, holding the GIL past every deadline. So every container a template builds (list,
tuple and dict literals, `dict()`, filter results) and every container handed to a
comparison, a test, a stringifying filter or output is weighed first and refused above
MAX_WORK_CHARS. Weights are remembered per render by object identity, so building `[a, a]`
costs the weighing of two known items, not a walk of everything below them.
"""

from __future__ import annotations

import math
import re
import string
import time
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from jinja2.utils import Namespace
from markupsafe import soft_str

from app.templates.limits import MAX_INT_BITS, MAX_ITEMS, MAX_OUTPUT_BYTES, MAX_WORK_CHARS


class LimitExceeded(Exception):
    """A template went over one of the render limits; the message says which."""


@dataclass
class _Meter:
    timeout: float
    deadline: float
    work_left: int
    # id(container) -> (the container, its weight): the container is held so that its id
    # cannot be reused by another object during the render.
    weights: dict[int, tuple[Any, int]] = dataclass_field(default_factory=dict)


_meter: ContextVar[_Meter | None] = ContextVar("herald_template_meter", default=None)


@contextmanager
def metered(timeout: float, work: int = MAX_WORK_CHARS) -> Iterator[None]:
    """Run the enclosed rendering under a deadline and a budget of intermediate text."""
    token = _meter.set(_Meter(timeout, time.perf_counter() + timeout, work))
    try:
        yield
    finally:
        _meter.reset(token)


def tick() -> None:
    """Stop the render once its deadline has passed."""
    meter = _meter.get()
    if meter is not None and time.perf_counter() > meter.deadline:
        raise LimitExceeded(f"rendering took longer than the {meter.timeout * 1000:.0f} ms limit")


def _room() -> int:
    meter = _meter.get()
    return MAX_WORK_CHARS if meter is None else meter.work_left


def reserve(size: int, what: str) -> None:
    """Refuse, before it runs, an operation that would build `size` characters."""
    if size > _room():
        raise LimitExceeded(
            f"{what} would build {size} characters; a render may build {MAX_WORK_CHARS} in all"
        )


def charged(value: Any) -> Any:
    """Count a string the template built against the render's budget."""
    meter = _meter.get()
    if meter is not None and isinstance(value, str | bytes):
        meter.work_left -= len(value)
        if meter.work_left < 0:
            raise LimitExceeded(
                f"the template built more than {MAX_WORK_CHARS} characters of intermediate text"
            )
    return value


def check_items(count: int, what: str) -> None:
    if count > MAX_ITEMS:
        raise LimitExceeded(f"{what} would hold {count} items; the limit is {MAX_ITEMS}")


def _check_int_bits(bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise LimitExceeded(
            f"the result would be an integer of about {bits:.0f} bits; the limit is {MAX_INT_BITS}"
        )


def number(value: Any) -> int:
    """A width or count argument, as far as sizing goes (non-numbers fail in the call itself)."""
    return value if isinstance(value, int) else 0


def _digits(text: str | None) -> int:
    if not text:
        return 0
    # Longer digit strings are beyond every limit anyway (and int() refuses very long ones).
    return int(text) if len(text) <= 18 else 10**18


class Ticking(Iterator[Any]):
    """An iterator checking the deadline before each item: loops and lazy filter results."""

    __slots__ = ("_items", "_iterator")

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = items
        self._iterator = iter(items)

    def __next__(self) -> Any:
        tick()
        return next(self._iterator)

    def __len__(self) -> int:
        # Keeps `loop.length` cheap for sized iterables; for unsized ones len() raises
        # TypeError, which Jinja's LoopContext handles by counting.
        return len(self._items)  # type: ignore[arg-type]


def guarded_range(*args: int) -> range:
    tick()
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_ITEMS + 1
    check_items(count, "range()")
    return numbers


class CappedBuffer(list[str]):
    """Where captured output accumulates: it may grow no larger than a channel's output."""

    __slots__ = ("_size",)

    def __init__(self) -> None:
        super().__init__()
        self._size = 0

    def append(self, item: str, /) -> None:
        self._grow(len(item))
        super().append(item)

    def extend(self, items: Iterable[str], /) -> None:
        items = tuple(items)
        self._grow(sum(len(item) for item in items))
        super().extend(items)

    def _grow(self, size: int) -> None:
        tick()
        self._size += size
        if self._size > MAX_OUTPUT_BYTES:
            raise LimitExceeded(
                "captured output (a block, macro or {% set %} block) is larger than "
                f"{MAX_OUTPUT_BYTES} characters"
            )


def capped_concat(parts: Iterable[str]) -> str:
    """Jinja's `concat`, joining captured output (buffers, `self.block()`): capped like output."""
    collected: list[str] = []
    size = 0
    for part in parts:
        tick()
        size += len(part)
        if size > MAX_OUTPUT_BYTES:
            raise LimitExceeded(
                f"captured output (a block, macro or {{% set %}} block) is larger than "
                f"{MAX_OUTPUT_BYTES} characters"
            )
        collected.append(part)
    return "".join(collected)


def collect(items: Iterable[Any], separator: int, what: str) -> list[Any]:
    """Materialise what a join will concatenate, stopping once the result would be too big."""
    collected: list[Any] = []
    size = 0
    for item in items:
        tick()
        size += separator + text_size(item)
        reserve(size, what)
        collected.append(item)
    return collected


def replace_size(text: str | bytes, old: Any, new: Any, count: Any) -> int:
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_NUMBER = re.compile(r"\d+")


def percent_size(template: str, values: Any) -> int:
    """An upper bound of `template % values`; `*` widths are refused (their size is hidden)."""
    if isinstance(values, Mapping):
        items = list(values.values())
    else:
        items = list(values) if isinstance(values, tuple) else [values]
    widest = max((text_size(item) for item in items), default=0)
    size = len(template)
    for spec in _PERCENT_SPEC.finditer(template):
        width, precision = spec.group(1), spec.group(2)
        if "*" in (width, precision):
            raise LimitExceeded("`*` widths are not allowed in % formats")
        size += max(widest, _digits(width), _digits(precision))
    return size


def format_size(template: str, values: Iterable[Any]) -> int:
    """An upper bound of `template.format(...)`; nested fields in specs are refused."""
    widest = max((text_size(value) for value in values), default=0)
    size = len(template)
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if spec and "{" in spec:
            raise LimitExceeded("nested fields in format specs ({:{width}}) are not allowed")
        size += max([widest, *(_digits(n) for n in _NUMBER.findall(spec or ""))])
    return size


def check_str_method(
    owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Size-check the str/bytes methods that can amplify; returns the (possibly) new args."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        reserve(max(len(owner), number(args[0])), f"str.{name}()")
    elif name == "expandtabs":
        tab = b"\t" if isinstance(owner, bytes) else "\t"
        size = number(args[0] if args else kwargs.get("tabsize", 8))
        reserve(len(owner) + owner.count(tab) * size, "str.expandtabs()")  # type: ignore[arg-type]
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        reserve(replace_size(owner, args[0], args[1], count), "str.replace()")
    elif name == "join" and args:
        return (collect(args[0], len(owner), "str.join()"), *args[1:])
    return args


_SEQUENCES = (str, bytes, list, tuple)


def check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            _check_repeat(left, right)
        elif isinstance(right, _SEQUENCES) and isinstance(left, int):
            _check_repeat(right, left)
        elif isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int_bits(right * math.log2(abs(left)))
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            reserve(len(left) + len(right), "`+`")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            check_items(len(left) + len(right), "`+`")
            check_weight_of(weight(left) + weight(right), "`+`")
    elif operator == "%" and isinstance(left, str):
        reserve(percent_size(left, right), "`%`")


def _check_repeat(sequence: str | bytes | list[Any] | tuple[Any, ...], times: int) -> None:
    if isinstance(sequence, str | bytes):
        reserve(len(sequence) * times, "`*`")
        return
    check_items(len(sequence) * times, "`*`")
    # `[big] * n` costs nothing until it is printed, joined or compared: weigh it now.
    if times > 0:
        check_weight_of(weight(sequence) * times, "`*`")


# What weight() walks into; everything else counts as a short scalar. Namespace is the one
# mutable container a template can change (`{% set ns.x = … %}`): its weight is never kept.
_CONTAINERS = (list, tuple, set, frozenset, dict, Mapping, KeysView, ValuesView, Namespace)
_SCALAR = 8  # a number, None, a date: about as long as its repr
_HEAVY = MAX_WORK_CHARS + 1  # weights stop counting here: anything heavier is refused
_TICK_EVERY = 4096  # items weighed between deadline checks


def _leaf(value: Any) -> int | None:
    """The weight of a value that holds no others; None for a container."""
    if isinstance(value, str | bytes):
        return len(value) + 4  # quotes and a separator
    if isinstance(value, _CONTAINERS):
        return None
    return _SCALAR


def _items(value: Any) -> Iterable[Any]:
    if isinstance(value, Namespace):
        value = value._Namespace__attrs  # its own dict (name-mangled)
    if isinstance(value, Mapping):
        return (*value.keys(), *value.values())
    if isinstance(value, ItemsView):
        return [part for pair in value for part in pair]
    return value  # type: ignore[no-any-return]


def weight(value: Any) -> int:
    """About how many characters `str(value)` would be, every element counted as often as
    it is reached; also what comparing, hashing or sorting it costs. At most _HEAVY."""
    leaf = _leaf(value)
    if leaf is not None:
        return leaf
    meter = _meter.get()
    memo: dict[int, tuple[Any, int]] = meter.weights if meter is not None else {}
    known = memo.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    return _weigh(value, memo)


def _weigh(root: Any, memo: dict[int, tuple[Any, int]]) -> int:
    """Depth-first, without recursion (templates can nest far deeper than Python's stack),
    each container summed once its unknown children are: linear in the distinct objects.

    A namespace can change after it was weighed, and so can whatever holds one: their
    weights serve this walk only and are not kept for the next."""
    stack, expanded, volatile = [root], set(), set()
    steps = 0
    while stack:
        node = stack[-1]
        key = id(node)
        known = memo.get(key)
        if known is not None and known[0] is node:
            stack.pop()
            continue
        if key not in expanded:
            expanded.add(key)
            # Each distinct child once, told apart in C (dict, zip, map): a list of 100,000
            # references to one list costs a lookup each, not a look at each, nor 100,000
            # entries on the stack that find the same weight.
            items = _items(node)
            distinct = dict(zip(map(id, items), items, strict=True))
            unknown = [
                item
                for key_of_item, item in distinct.items()
                if key_of_item not in expanded and key_of_item not in memo and _leaf(item) is None
            ]
            if unknown:
                stack.extend(unknown)
                continue
        total = 2
        changes = isinstance(node, Namespace)
        for item in _items(node):
            steps += 1
            if steps % _TICK_EVERY == 0:
                tick()
            leaf = _leaf(item)
            if leaf is None:
                entry = memo.get(id(item))
                # Not weighed yet: a cycle back to a container being weighed (a namespace
                # holding itself), which repr() prints as `...`.
                leaf = entry[1] if entry is not None else _SCALAR
                changes = changes or id(item) in volatile or entry is None
            total += leaf
            if total >= _HEAVY:
                total, changes = _HEAVY, True  # not every item was looked at: keep nothing
                break
        memo[key] = (node, total)
        if changes:
            volatile.add(key)
        stack.pop()
    result = memo[id(root)][1]
    for key in volatile:
        del memo[key]
    return result


def check_weight_of(size: int, what: str) -> None:
    if size > MAX_WORK_CHARS:
        shown = f"more than {MAX_WORK_CHARS}" if size >= _HEAVY else f"about {size}"
        raise LimitExceeded(
            f"{what} is too big: {shown} characters once printed, each element counted as "
            f"often as it is reached; the limit is {MAX_WORK_CHARS}"
        )


def check_weight(value: Any, what: str) -> Any:
    """Refuse a container too heavy to compare, hash, sort or print; returns `value`."""
    if _leaf(value) is None:
        check_weight_of(weight(value), what)
    return value


def text_size(value: Any) -> int:
    """How long `str(value)` is, found without building it when `value` is a container."""
    if isinstance(value, str | bytes):
        return len(value)
    if _leaf(value) is None:
        size = weight(value)
        check_weight_of(size, "turning a container into text")
        return size
    return len(soft_str(value))
