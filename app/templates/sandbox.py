"""The sandboxed Jinja2 environment tenant templates run in, with time and size guards.

Jinja2's SandboxedEnvironment keeps templates away from Python internals, but not from
running for ever or building a gigabyte string in one expression. TemplateSandbox adds the
guards of app/templates/guards.py:

- time: every loop step, call, filter and guarded operator checks the render's deadline,
  so a template made of many cheap steps (nested loops, recursive macros) stops just after
  the limit instead of holding a worker;
- size: operations whose result size the template controls (`*`, `+`, `~`, `%`, `**`,
  padding, `replace`, `join`, format widths, `batch`/`slice` fill, `[big] * n`) are checked
  *before* they run, and every string built is charged to the render's work budget;
- captured output (`{% set %}` blocks, macros, `{% filter %}` blocks, `self.block()`) is
  capped like output;
- weight: containers are weighed (guards.weight) where they are built (list, tuple and dict
  literals, `dict()`, `namespace()`, filter results) and before one C call walks them
  (comparisons and `in`, tests, `sort`/`unique`/`tojson`/`string`/… and every filter that
  turns its input into text, `~`, `%`, `format`, and output), so that `{% set a = [a, a] %}`
  cannot grow a structure whose comparison or printing holds the GIL for minutes.

Loops, `~`, comparisons, literals and capture buffers compile to plain Python, so a code
generator subclass (Jinja2's `code_generator_class` hook) routes them through the guards.
These guards are the first line only: a render runs in a child process that is killed at
its deadline (app/templates/pool.py), for whatever C call they do not foresee.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from types import GeneratorType
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame, operators
from jinja2.filters import make_attrgetter, sync_do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace, pass_eval_context
from markupsafe import soft_str

from app.templates.guards import (
    CappedBuffer,
    LimitExceeded,
    Ticking,
    capped_concat,
    charged,
    check_binop,
    check_items,
    check_str_method,
    check_weight,
    collect,
    format_size,
    guarded_range,
    number,
    percent_size,
    replace_size,
    reserve,
    text_size,
    tick,
)


# Size checks for the built-in filters that can amplify; each takes the filter's arguments.
def _check_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    reserve(max(text_size(value), number(width)), "center")


def _check_indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = soft_str(s)
    per_line = len(width) if isinstance(width, str) else number(width)
    reserve(len(text) + (text.count("\n") + 1) * per_line, "indent")


def _check_replace(s: Any, old: Any, new: Any, count: Any = None, *_: Any, **__: Any) -> None:
    reserve(replace_size(soft_str(s), soft_str(old), soft_str(new), count), "replace")


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    reserve(percent_size(soft_str(value), kwargs or args), "format")


def _check_batch(value: Any, linecount: Any, fill_with: Any = None, *_: Any, **__: Any) -> None:
    if fill_with is not None:
        check_items(number(linecount), "batch")


def _check_slice(value: Any, slices: Any, *_: Any, **__: Any) -> None:
    check_items(number(slices), "slice")


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0, *_: Any, **__: Any) -> None:
    # Summing lists or strings is quadratic and unbounded; templates add numbers.
    if not isinstance(start, int | float):
        raise LimitExceeded("sum adds numbers only; `start` must be a number")


def _check_wordwrap(
    s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None, **__: Any
) -> None:
    text = soft_str(s)
    reserve(len(text) + (len(text) + 1) * len(soft_str(wrapstring or "\n")), "wordwrap")


def _check_urlize(
    value: Any, trim_url_limit: Any = None, nofollow: Any = False, target: Any = None,
    rel: Any = None, *_: Any, **__: Any,
) -> None:  # fmt: skip
    text = soft_str(value)
    per_link = 64 + len(soft_str(target or "")) + len(soft_str(rel or ""))
    reserve(2 * len(text) + len(text.split()) * per_link, "urlize")


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_center,
    "indent": _check_indent,
    "replace": _check_replace,
    "format": _check_format,
    "batch": _check_batch,
    "slice": _check_slice,
    "sum": _check_sum,
    "wordwrap": _check_wordwrap,
    "urlize": _check_urlize,
}


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    """The `join` filter, materialising its items under the size check first."""
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    return sync_do_join(eval_ctx, collect(value, len(soft_str(d)), "join"), d)


# Filters that neither compare, hash nor stringify their input as a whole (they pass items
# on, count them or pick some): their input is not weighed, so that `items|length` over a
# large `data` list stays cheap. Every other filter weighs its input and arguments first.
_STRUCTURAL_FILTERS = frozenset(
    {"attr", "batch", "count", "d", "default", "first", "last", "length", "list", "map",
     "random", "reject", "rejectattr", "reverse", "select", "selectattr", "slice", "items"}
)  # fmt: skip


def _ticking(value: Any) -> Any:
    return Ticking(value) if isinstance(value, GeneratorType) else value


def _guard_result(value: Any) -> Any:
    if isinstance(value, GeneratorType):
        return Ticking(value)
    # A container a call or filter built (`dict(a=x, b=x)`, `batch(…, fill_with=x)`).
    return charged(check_weight(value, "the result"))


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
    for argument in (*args, *kwargs.values()):
        check_weight(argument, what)


def _guard_filter(
    name: str, func: Callable[..., Any], check: Callable[..., None] | None
) -> Callable[..., Any]:
    # Filters marked pass_context/pass_eval_context/pass_environment get that object first.
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0
    weighs = name not in _STRUCTURAL_FILTERS
    # What a structural filter returns holds what it was given, once; the fill of `batch`
    # and `slice` repeats one value up to MAX_ITEMS times.
    weighs_result = weighs or name in ("batch", "slice")

    @functools.wraps(func)  # keeps `jinja_pass_arg`, which the compiler reads
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if weighs:
            _check_arguments(args[skip:], kwargs, f"the filter {name}")
        if check is not None:
            check(*args[skip:], **kwargs)
        result = func(*args, **kwargs)
        return _guard_result(result) if weighs_result else _ticking(result)

    return guarded


def _guard_test(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Tests compare (`eq`, `in`, `lt`, …) or look: weigh what they are given first."""
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        _check_arguments(args[skip:], kwargs, f"the test {name}")
        return func(*args, **kwargs)

    return guarded


class GuardedCodeGenerator(CodeGenerator):
    """Compiles loops, `~`, comparisons, literals and capture buffers into calls of the
    environment's guards."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # Every loop iterates `environment.guard_loop(<iterable>)`, so that each step checks
        # the deadline even when the loop body does nothing.
        for loop in node.find_all(nodes.For):
            guard = nodes.EnvironmentAttribute("guard_loop", lineno=loop.iter.lineno)
            loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            markup = "context.eval_ctx.autoescape"
        else:
            markup = str(bool(frame.eval_ctx.autoescape))
        self.write("environment.join_values((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write(f"), {markup})")

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    # `[a, a]`, `(a, a)` and `{k: a}` are weighed as they are built. A tuple on the left of
    # `{% set a, b = … %}` or in `{% for k, v in … %}` is a target, not a value: left as is.
    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":
            super().visit_Tuple(node, frame)
            return
        self.write("environment.built(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        # `a < b < c` stays one chained comparison; each operand is weighed once, as it is
        # evaluated, so that `==`, `<` and `in` never walk a structure beyond the limit.
        self.write("(")
        self._comparable(node.expr, frame)
        for operand in node.ops:
            self.write(f" {operators[operand.op]} ")
            self._comparable(operand.expr, frame)
        self.write(")")

    def _comparable(self, node: nodes.Expr, frame: Frame) -> None:
        self.write("environment.comparable(")
        self.visit(node, frame)
        self.write(")")


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, strict about undefined names, with Herald's guards."""

    code_generator_class = GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    new_buffer = CappedBuffer
    concat = staticmethod(capped_concat)

    def __init__(self, *, autoescape: bool) -> None:
        # No loader: a template cannot include, import or extend anything. No optimizer:
        # it would evaluate constant expressions at compile time, outside every guard.
        # `finalize` sees every value `{{ … }}` prints, before str() or escape() does.
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            optimized=False,
            finalize=_printable,
        )
        # Jinja's defaults minus `lipsum`, whose size argument is unbounded.
        self.globals = {
            "range": guarded_range,
            "dict": dict,
            "namespace": Namespace,
            "cycler": Cycler,
            "joiner": Joiner,
        }
        self.filters = {
            name: _guard_filter(name, func, _FILTER_CHECKS.get(name))
            for name, func in self.filters.items()
        }
        self.filters["join"] = _guard_filter("join", _join, None)
        tests: dict[str, Any] = dict(self.tests)
        self.tests = {name: _guard_test(name, func) for name, func in tests.items()}

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str | bytes):
            args = check_str_method(owner, getattr(obj, "__name__", ""), args, kwargs)
        else:
            # `items.index(x)`, `d.get(k)`, `loop.changed(x)`, macros: compare or hash.
            check_weight(owner, "the call")
            _check_arguments(args, kwargs, "the call")
        return _guard_result(super().call(context, obj, *args, **kwargs))

    def built(self, value: Any) -> Any:
        """A list, tuple or dict literal, weighed as it is built."""
        tick()
        return check_weight(value, "the literal")

    def comparable(self, value: Any) -> Any:
        """An operand of `==`, `!=`, `<`, `<=`, `>`, `>=`, `in` or `not in`."""
        return check_weight(value, "the comparison")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        tick()
        check_binop(operator, left, right)
        return charged(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        template: str = value.__self__
        by_mapping = value.__name__ == "format_map"

        @functools.wraps(formatter)
        def guarded(*args: Any, **kwargs: Any) -> str:
            tick()
            if by_mapping and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            else:
                values = [*args, *kwargs.values()]
            reserve(format_size(template, values), "str.format()")
            result: str = charged(formatter(*args, **kwargs))
            return result

        return guarded

    def guard_loop(self, items: Iterable[Any]) -> Ticking:
        return Ticking(items)

    def join_values(self, values: tuple[Any, ...], markup: bool) -> str:
        """`a ~ b ~ c`, sized before it is built."""
        tick()
        reserve(sum(text_size(value) for value in values), "`~`")
        result: str = charged(markup_join(values) if markup else str_join(values))
        return result


def _printable(value: Any) -> Any:
    """Every value `{{ … }}` prints: a container is sized before str() builds its text."""
    if not isinstance(value, str):
        reserve(text_size(value), "printing")
    return value
