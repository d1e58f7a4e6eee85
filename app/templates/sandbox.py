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
  capped like output.

Loops, `~` and capture buffers compile to plain Python, so a code generator subclass
(Jinja2's `code_generator_class` hook) routes them through the guards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from types import GeneratorType
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
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
    collect,
    format_size,
    guarded_range,
    number,
    percent_size,
    replace_size,
    reserve,
    tick,
)


# Size checks for the built-in filters that can amplify; each takes the filter's arguments.
def _check_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    reserve(max(len(soft_str(value)), number(width)), "center")


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


def _guard_result(value: Any) -> Any:
    if isinstance(value, GeneratorType):
        return Ticking(value)
    return charged(value)


def _guard_filter(
    func: Callable[..., Any], check: Callable[..., None] | None
) -> Callable[..., Any]:
    # Filters marked pass_context/pass_eval_context/pass_environment get that object first.
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0

    @functools.wraps(func)  # keeps `jinja_pass_arg`, which the compiler reads
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if check is not None:
            check(*args[skip:], **kwargs)
        return _guard_result(func(*args, **kwargs))

    return guarded


class GuardedCodeGenerator(CodeGenerator):
    """Compiles loops, `~` and capture buffers into calls of the environment's guards."""

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


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, strict about undefined names, with Herald's guards."""

    code_generator_class = GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    new_buffer = CappedBuffer
    concat = staticmethod(capped_concat)

    def __init__(self, *, autoescape: bool) -> None:
        # No loader: a template cannot include, import or extend anything. No optimizer:
        # it would evaluate constant expressions at compile time, outside every guard.
        super().__init__(autoescape=autoescape, undefined=StrictUndefined, optimized=False)
        # Jinja's defaults minus `lipsum`, whose size argument is unbounded.
        self.globals = {
            "range": guarded_range,
            "dict": dict,
            "namespace": Namespace,
            "cycler": Cycler,
            "joiner": Joiner,
        }
        self.filters = {
            name: _guard_filter(func, _FILTER_CHECKS.get(name))
            for name, func in self.filters.items()
        }
        self.filters["join"] = _guard_filter(_join, None)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str | bytes):
            args = check_str_method(owner, getattr(obj, "__name__", ""), args, kwargs)
        return _guard_result(super().call(context, obj, *args, **kwargs))

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
        reserve(sum(len(soft_str(value)) for value in values), "`~`")
        result: str = charged(markup_join(values) if markup else str_join(values))
        return result
