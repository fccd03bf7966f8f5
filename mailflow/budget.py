"""Render budget: a template cannot run away with time or memory (issue 12).

Before this, a template with runaway loops (`{% for i in range(100000) %}{% for j in
range(100000) %}...`) made `templates check` and `serve` hang; `serve` checks templates on
its main thread, so it never got back to its loop to see SIGTERM. Jinja2's sandbox stops
unsafe attribute access, not work. Each render now has a budget:

- steps: every loop iteration and every call made by template code counts; more than
  RENDER_STEPS (1,000,000; a real mail takes a few hundred) and the render fails;
- time: RENDER_SECONDS (2 s; a real mail takes under a millisecond), checked every 1,024
  steps and at every piece of output;
- size: RENDER_CHARS (2,000,000 characters) for the output and for any one string, list or
  mapping made on the way (`*`, `+`, `~`, `**`, `%`, calls and filters that take a width),
  checked before the allocation where the size can be known in advance.

How: `BudgetedEnvironment` (a `SandboxedEnvironment`) rewrites each template before it is
compiled, so every `for` iterates through a counting wrapper and every `~` concatenation is
size-checked; it intercepts the arithmetic operators and every call (the sandbox routes
calls through `call`); and `render` takes the output in small batches. A budget error is a
`jinja2.TemplateRuntimeError` raised inside template code, so `compose` reports it as
`FILE:LINE: render budget exceeded: ...` like any other render error, `templates check`
refuses the template, and `serve` keeps the last good set (and stops on SIGTERM, because no
check can run longer than the budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from itertools import islice
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

RENDER_SECONDS = 2.0
RENDER_STEPS = 1_000_000
RENDER_CHARS = 2_000_000
_CHECK_TIME_EVERY = 1024  # steps between clock reads (a read costs more than a step)
_BATCH = 32  # output pieces joined at a time before the size is checked
_LOOP = "_mf_loop"
_SIZED = "_mf_sized"


class RenderBudgetError(jinja2.TemplateRuntimeError):
    """A render used more steps, time or room than its budget."""


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > RENDER_STEPS:
            raise RenderBudgetError(
                f"render budget exceeded: more than {RENDER_STEPS:,} loop iterations and calls"
            )
        if not self.steps % _CHECK_TIME_EVERY:
            self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderBudgetError(f"render budget exceeded: more than {RENDER_SECONDS:g} s")


_CURRENT: ContextVar[_Budget | None] = ContextVar("mailflow_render_budget", default=None)


def _step() -> None:
    budget = _CURRENT.get()
    if budget is not None:
        budget.step()


def _too_big(what: str, size: int) -> RenderBudgetError:
    return RenderBudgetError(
        f"render budget exceeded: {what} of {size:,} characters or items (at most {RENDER_CHARS:,})"
    )


def sized(value: Any) -> Any:
    """`value`, unless it is a string or collection over RENDER_CHARS."""
    if isinstance(value, str | bytes | list | tuple | dict | set) and len(value) > RENDER_CHARS:
        raise _too_big("a value", len(value))
    return value


class _Loop:
    """What a template's `for` iterates: the same items, each one a step of the budget."""

    __slots__ = ("_items",)

    def __init__(self, items: Any) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)  # TypeError without one: the loop then counts for itself

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            _step()
            yield item


class _Rewrite(NodeTransformer):
    """Every `for` iterates through `|_mf_loop`; every `~` goes through `|_mf_sized`.

    Filters rather than calls: a filter compiles to a plain function call, a call to the
    sandbox's `call` (three layers of Python per use).
    """

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter(_LOOP, node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(_SIZED, node)


def _filter(name: str, arg: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(arg, name, [], [], None, None, lineno=arg.lineno)


def _check_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    # A width, count or repetition this large only ever makes something too big (e.g.
    # "x".ljust(10**9), "x"|center(10**9)): refuse before Python allocates it.
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > RENDER_CHARS:
            raise _too_big("an argument", abs(value))


def _width_checked(func: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_args(args[1:], kwargs)
        return sized(func(*args, **kwargs))

    checked.__name__ = getattr(func, "__name__", "filter")
    for attr in ("jinja_pass_arg",):  # keep pass_context/pass_eval_context/... markers
        if hasattr(func, attr):
            setattr(checked, attr, getattr(func, attr))
    return checked


class BudgetedEnvironment(SandboxedEnvironment):
    """A sandbox whose renders have a budget of steps, time and size (module docstring)."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters[_LOOP] = _Loop
        self.filters[_SIZED] = sized
        for name in ("center", "indent", "format"):  # the ones whose argument is a size
            if name in self.filters:
                self.filters[name] = _width_checked(self.filters[name])
        lipsum = self.globals.get("lipsum")
        if lipsum is not None:
            self.globals["lipsum"] = _width_checked(lipsum)

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        # Rewritten just before code generation (Jinja2's documented hook), so `parse()`
        # still gives the tree as written, for the static checks of `templates check`.
        tree = _Rewrite().visit(source)
        tree.set_environment(self)
        return super()._generate(tree, name, filename, defer_init)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sequence = isinstance(seq, str | bytes | list | tuple)
                if sequence and isinstance(count, int) and len(seq) * count > RENDER_CHARS:
                    raise _too_big("a repetition", len(seq) * count)
        elif operator == "**" and isinstance(right, int) and abs(right) > 1000:
            if not (isinstance(left, int | float) and abs(left) <= 1):
                raise RenderBudgetError(f"render budget exceeded: a power of {right:,}")
        elif operator == "+":
            for a, b in ((left, right), (right, left)):
                joinable = isinstance(a, str | list | tuple) and isinstance(b, type(a))
                if joinable and len(a) + len(b) > RENDER_CHARS:
                    raise _too_big("a concatenation", len(a) + len(b))
        return sized(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _step()
        _check_args(args, kwargs)
        return sized(super().call(__context, __obj, *args, **kwargs))


def render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """`template.render(context)` within a fresh budget (see the module docstring)."""
    budget = _Budget(RENDER_SECONDS)
    token = _CURRENT.set(budget)
    out: list[str] = []
    size = 0
    try:
        # As Template.generate, one generator layer less, and the output taken in small
        # batches (joined in C) so that its size is known before it is all in memory.
        pieces = template.root_render_func(template.new_context(dict(context)))
        try:
            while batch := list(islice(pieces, _BATCH)):
                text = "".join(batch)
                out.append(text)
                size += len(text)
                if size > RENDER_CHARS:
                    break
                budget.check_time()
        except Exception:
            template.environment.handle_exception()  # raises, with template file:line
    finally:
        _CURRENT.reset(token)
    if size > RENDER_CHARS:
        raise _too_big("the output", size)
    return "".join(out)
