"""Templates: load, sandbox, check, refresh and render the Jinja2 templates of outgoing mail.

Templates live in ``templates/`` at the repository root (:data:`SHIPPED_DIR`). For every name in
:data:`TEMPLATE_NAMES` there are three files: ``NAME.subject.j2``, ``NAME.txt.j2`` and
``NAME.html.j2``. Files whose name starts with ``_`` (``_layout.html.j2``, ``_macros.j2``) are
shared helpers that the others extend or import. An admin may point ``[templates] dir`` at a
directory of their own: any file found there wins, any file missing there falls back to the
shipped one.

Rendering is done in a :class:`jinja2.sandbox.SandboxedEnvironment` with
:class:`jinja2.StrictUndefined` (a typo is an error, never an empty string); only ``*.html.j2``
files are autoescaped, so user text is escaped in HTML and shown as written in plain text.

A broken template must never reach an inbox. :meth:`Templates.check` renders every template in
every variant with sample data (:func:`mailflow.samples.variants`) and reports each problem as
one line ``FILE:LINE: message``; it also looks, without rendering, for unknown variables and
unknown keys in branches the sample data does not reach. :class:`Templates` keeps an in-memory
copy of the last set of files that passed the check: :meth:`Templates.refresh` (called by
``serve``) switches to edited files only once they pass, and :meth:`Templates.render` always
uses the last good set.

Every render has a budget of steps, time and output size (section "The render budget" at the
end): a runaway template fails its check instead of hanging ``templates check`` or ``serve``.
"""

from __future__ import annotations

import difflib
import re
import time
import traceback
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from mailflow.errors import TemplateError
from mailflow.letters import TEMPLATE_NAMES, require_template
from mailflow.mime import Rendered
from mailflow.samples import sample_context, variants

__all__ = ["PARTS", "SHIPPED_DIR", "TEMPLATE_NAMES", "Rendered", "TemplateError", "Templates"]

PARTS: tuple[str, ...] = ("subject", "txt", "html")
"""The three files of one template: ``NAME.subject.j2``, ``NAME.txt.j2``, ``NAME.html.j2``."""


def _shipped_dir() -> Path:
    """templates/ at the repository root (a checkout, `pip install -e`), else the copy an
    installed wheel carries as the data package `mailflow/mail_templates/`."""
    here = Path(__file__).resolve().parent
    installed = here / "mail_templates"
    return installed if installed.is_dir() else here.parent / "templates"


SHIPPED_DIR: Path = _shipped_dir()
"""The shipped templates: ``templates/`` next to the ``mailflow`` package directory.

mailflow is installed in editable (development) mode from its repository, so the package
directory is ``REPO/mailflow`` and the templates are ``REPO/templates``. ``resolve()`` makes this
independent of the current directory and of symlinks to the module.
"""

_TEMPLATE_SUFFIX = ".j2"


def _filename(name: str, part: str) -> str:
    return f"{name}.{part}{_TEMPLATE_SUFFIX}"


# --------------------------------------------------------------------------------------------
# Loading: an in-memory snapshot of the template files


@dataclass(frozen=True)
class _Source:
    path: Path
    text: str


_Signature = tuple[tuple[str, str, int, int], ...]


class _SnapshotLoader(jinja2.BaseLoader):
    """Serves templates from an in-memory snapshot, reporting their real paths as filenames.

    Holding the text in memory is what lets the last good set stay in use while the files on
    disk are being edited. The real path as filename makes syntax errors and traceback frames
    name the file the admin must fix.
    """

    def __init__(self, files: Mapping[str, _Source]) -> None:
        self._files = dict(files)

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source = self._files.get(template)
        if source is None:
            raise jinja2.TemplateNotFound(template)
        return source.text, str(source.path), lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self._files)


def _iter_template_files(directory: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(directory.rglob(f"*{_TEMPLATE_SUFFIX}")):
        if path.is_file():
            yield path.relative_to(directory).as_posix(), path


def _new_environment(files: Mapping[str, _Source]) -> SandboxedEnvironment:
    # The sandbox with a render budget (steps, time, size): see "The render budget" below.
    return BudgetedEnvironment(
        loader=_SnapshotLoader(files),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False, default=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )


class _TemplateSet:
    """One consistent set of template files (the resolved override/shipped mix) and its env."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = tuple(dirs)
        self.problems: list[str] = []
        self.signature = _signature(self.dirs)
        files: dict[str, _Source] = {}
        # Later directories win: dirs is (shipped, override).
        for directory in self.dirs:
            if not directory.is_dir():
                self.problems.append(f"{directory}: templates directory not found")
                continue
            for name, path in _iter_template_files(directory):
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    self.problems.append(f"{path}: not valid UTF-8 ({exc.reason})")
                    continue
                except OSError as exc:
                    self.problems.append(f"{path}: cannot read ({exc.strerror})")
                    continue
                files[name] = _Source(path, text)
        self.files = files
        self.env = _new_environment(files)
        # Compiled templates by file name: the environment's own cache takes a lock and an
        # up-to-date check per look-up, three times per mail of a fan-out.
        self._compiled: dict[str, jinja2.Template] = {}

    def path_of(self, filename: str) -> str:
        source = self.files.get(filename)
        if source is not None:
            return str(source.path)
        return str(self.dirs[-1] / filename)

    def render_part(self, name: str, part: str, context: Mapping[str, Any]) -> str:
        filename = _filename(name, part)
        if filename not in self.files:
            raise TemplateError("template not found", self.path_of(filename))
        try:
            template = self._compiled.get(filename)
            if template is None:
                template = self._compiled[filename] = self.env.get_template(filename)
            return render_within_budget(template, context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.message or "syntax error", exc.filename, exc.lineno) from exc
        except jinja2.TemplateNotFound as exc:
            file, line = _location(exc, self, filename)
            raise TemplateError(f"template not found: {exc.name}", file, line) from exc
        except Exception as exc:  # any render error: undefined, sandbox, type errors, ...
            file, line = _location(exc, self, filename)
            message = str(exc) or type(exc).__name__
            if isinstance(exc, jinja2.TemplateError):
                raise TemplateError(message, file, line) from exc
            raise TemplateError(f"{type(exc).__name__}: {message}", file, line) from exc

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        subject = self.render_part(name, "subject", context)
        text = self.render_part(name, "txt", context)
        html = self.render_part(name, "html", context)
        return Rendered(
            subject=_clean_subject(subject), text=_clean_text(text), html=html.strip() + "\n"
        )


def _signature(dirs: Sequence[Path]) -> _Signature:
    """What changes when any template file is added, removed or edited (cheap: stat only)."""
    entries: list[tuple[str, str, int, int]] = []
    for directory in dirs:
        if not directory.is_dir():
            entries.append((str(directory), "", -1, -1))
            continue
        for name, path in _iter_template_files(directory):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((str(directory), name, st.st_mtime_ns, st.st_size))
    return tuple(entries)


def _location(exc: BaseException, tset: _TemplateSet, filename: str) -> tuple[str, int | None]:
    """The template file and line an exception was raised at, from its traceback.

    Jinja2 rewrites tracebacks so that template code appears as frames whose filename is the
    template's (here: its real path) and whose line number is the template line. The innermost
    such frame is where the error is; without one, fall back to the file being rendered.
    """
    paths = {str(source.path) for source in tset.files.values()}
    found: tuple[str, int | None] | None = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename in paths:
            found = (frame.filename, frame.lineno)
    if found is not None:
        return found
    lineno = getattr(exc, "lineno", None)
    return tset.path_of(filename), lineno if isinstance(lineno, int) else None


def _clean_subject(subject: str) -> str:
    """One line, stripped, without control characters (a header must never break)."""
    collapsed = " ".join(subject.split())
    return "".join(ch for ch in collapsed if unicodedata.category(ch) != "Cc")


def _clean_text(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# Static checks: variables and keys in branches the sample data does not reach


def _defined_names(ast: nodes.Template) -> set[str]:
    """Names the template defines itself anywhere (imports, macros, set), to never flag them.

    Jinja2's analysis does not see top-level imports from inside ``{% block %}`` bodies of a
    template that ``{% extends %}`` another, although they work at render time.
    """
    names: set[str] = set()
    for imp in ast.find_all(nodes.FromImport):
        for item in imp.names:
            names.add(item[1] if isinstance(item, tuple) else item)
    for node in ast.find_all(nodes.Import):
        names.add(node.target)
    for macro in ast.find_all(nodes.Macro):
        names.add(macro.name)
    for name in ast.find_all(nodes.Name):
        if name.ctx in ("store", "param"):
            names.add(name.name)
    return names


def _static_problems(tset: _TemplateSet, name: str, filename: str) -> list[str]:
    """Unknown top-level variables and unknown keys of known dicts, found without rendering.

    Rendering with sample data only exercises the branches the samples take; a typo in another
    branch would surface in production. This walks the template's syntax tree instead.
    """
    source = tset.files.get(filename)
    if source is None:
        return []
    try:
        ast = tset.env.parse(source.text, filename, str(source.path))
    except jinja2.TemplateSyntaxError:
        return []  # reported by the compile step
    contexts = [ctx for _label, ctx in variants(name)]
    known: dict[str, Any] = {}
    for ctx in contexts:
        for key, value in ctx.items():
            known.setdefault(key, value)
    problems: list[str] = []
    undeclared = meta.find_undeclared_variables(ast) - set(known) - set(tset.env.globals)
    undeclared -= _defined_names(ast)
    for var in sorted(undeclared):
        line = next(
            (n.lineno for n in ast.find_all(nodes.Name) if n.name == var and n.ctx == "load"),
            None,
        )
        problems.append(str(TemplateError(f"{var!r} is undefined", str(source.path), line)))

    # Shapes of names: top-level dicts, and loop variables over top-level lists of dicts.
    shapes: dict[str, set[str]] = {}
    for key, value in known.items():
        if isinstance(value, dict):
            shapes[key] = set(value)
    for loop in ast.find_all(nodes.For):
        if (
            isinstance(loop.target, nodes.Name)
            and isinstance(loop.iter, nodes.Name)
            and isinstance(known.get(loop.iter.name), list)
        ):
            items = known[loop.iter.name]
            keys: set[str] = set()
            for ctx in contexts:
                for item in ctx.get(loop.iter.name, items):
                    if isinstance(item, dict):
                        keys |= set(item)
            if keys and loop.target.name not in known:
                shapes.setdefault(loop.target.name, keys)
    for node in ast.find_all(nodes.Getattr):
        if (
            isinstance(node.node, nodes.Name)
            and node.node.name in shapes
            and node.attr not in shapes[node.node.name]
            and not hasattr(dict, node.attr)
        ):
            message = f"{node.node.name!r} has no attribute {node.attr!r}"
            problems.append(str(TemplateError(message, str(source.path), node.lineno)))
    return problems


# --------------------------------------------------------------------------------------------
# The public API


class Templates:
    """The mail templates: shipped ones, optionally overridden file by file from an admin's dir.

    Construct it, then call :meth:`check` before use (``serve`` refuses to start on problems).
    :meth:`render` uses the last good set of files; :meth:`refresh` picks up edits that pass.
    """

    def __init__(self, override_dir: Path | None = None) -> None:
        self.override_dir = Path(override_dir) if override_dir is not None else None
        if self.override_dir is not None and not self.override_dir.is_dir():
            raise TemplateError(f"{self.override_dir}: templates directory not found")
        self._dirs: tuple[Path, ...] = (SHIPPED_DIR,)
        if self.override_dir is not None:
            self._dirs = (SHIPPED_DIR, self.override_dir)
        self._active = _TemplateSet(self._dirs)
        # What refresh() last looked at, and the problems it found there (None: not checked).
        self._seen: _Signature = self._active.signature
        self._seen_problems: list[str] | None = None

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        """Render template ``name`` with ``context``; any failure is a :class:`TemplateError`."""
        require_template(name)
        return self._active.render(name, context)

    def check(self) -> list[str]:
        """Check the template files as they are on disk now; ``[]`` when all is well.

        Each problem is one line ``FILE:LINE: message``: syntax errors (in any ``*.j2`` file),
        undefined variables and other render errors in every sample variant, and unknown
        variables or keys in branches the samples do not reach.
        """
        return _check_set(_TemplateSet(self._dirs))

    def strays(self) -> list[str]:
        """Warnings for files in the override directory that no template reads: a misspelt
        ``chekin.txt.j2`` would otherwise be ignored in silence while the shipped check-in
        goes out. Partials (names starting with ``_``) may be anything: templates include them.
        """
        if self.override_dir is None:
            return []
        shipped = sorted(f.name for f in SHIPPED_DIR.glob("*.j2"))
        out = []
        for f in sorted(self.override_dir.glob("*.j2")):
            if f.name not in shipped and not f.name.startswith("_"):
                close = difflib.get_close_matches(f.name, shipped, n=1, cutoff=0.75)
                guess = f' (did you mean "{close[0]}"?)' if close else ""
                out.append(f"{f}: replaces no template, so it is not used{guess}")
        return out

    def preview(self, name: str, setback: bool = False, variant: str | None = None) -> Rendered:
        """Render ``name`` with sample data.

        ``setback`` selects the digest's setback variant; ``variant`` one of
        ``samples.sample_variants`` for the newer templates (default: the first).
        """
        require_template(name)
        return self.render(name, sample_context(name, setback=setback, variant=variant))

    def refresh(self) -> list[str]:
        """Pick up edited template files once they pass the check.

        If any template file was added, removed or changed since last looked at (stat: mtime and
        size), the files are read and checked. When the check passes they become the set that
        :meth:`render` uses and ``[]`` is returned; when it fails, the last good set stays in use
        and the problems are returned (again on every call, until the files change).
        """
        signature = _signature(self._dirs)
        if signature == self._seen and self._seen_problems is not None:
            return list(self._seen_problems)
        candidate = _TemplateSet(self._dirs)
        problems = _check_set(candidate)
        self._seen = candidate.signature
        self._seen_problems = problems
        if not problems:
            self._active = candidate
        return list(problems)


def _file_line(problem: str) -> str:
    """The ``FILE:LINE`` part of a problem line (for de-duplication)."""
    match = re.match(r"^(.*?:\d+):", problem)
    return match.group(1) if match else problem


def _check_set(tset: _TemplateSet) -> list[str]:
    problems: list[str] = list(tset.problems)
    broken: set[str] = set()
    # 1. Every file compiles (helpers too, even if nothing uses them).
    for filename in sorted(tset.files):
        try:
            tset.env.get_template(filename)
        except jinja2.TemplateSyntaxError as exc:
            broken.add(filename)
            err = TemplateError(exc.message or "syntax error", exc.filename, exc.lineno)
            problems.append(str(err))
        except Exception as exc:  # e.g. an {% extends %} of a missing file at compile time
            broken.add(filename)
            file, line = _location(exc, tset, filename)
            problems.append(str(TemplateError(str(exc) or type(exc).__name__, file, line)))
    # 2. Every part of every template renders in every variant.
    for name in TEMPLATE_NAMES:
        for part in PARTS:
            filename = _filename(name, part)
            if filename not in tset.files:
                problems.append(str(TemplateError("template not found", tset.path_of(filename))))
                continue
            if filename in broken:
                continue
            for label, context in variants(name):
                try:
                    tset.render_part(name, part, context)
                except TemplateError as exc:
                    suffix = f" (sample: {name} {label})" if label != "sample" else ""
                    problems.append(f"{exc}{suffix}")
            # Static findings only where rendering found nothing on that line already.
            reported = {_file_line(problem) for problem in problems}
            for problem in _static_problems(tset, name, filename):
                if _file_line(problem) not in reported:
                    problems.append(problem)
    # Deduplicate (the same error shows up in several variants), keeping order.
    seen: set[str] = set()
    unique: list[str] = []
    for problem in problems:
        key = problem.split(" (sample: ", 1)[0]
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


# -- The render budget ------------------------------------------------------------------------
#
# Before this, a template with runaway loops (`{% for i in range(100000) %}{% for j in
# range(100000) %}...`) made `templates check` and `serve` hang; `serve` checks templates on
# its main thread, so it never got back to its loop to see SIGTERM. Jinja2's sandbox stops
# unsafe attribute access, not work. Each render now has a budget:
#
# - steps: every loop iteration and every call made by template code counts; more than
#   RENDER_STEPS (1,000,000; a real mail takes a few hundred) and the render fails;
# - time: RENDER_SECONDS (2 s; a real mail takes under a millisecond), checked every 1,024
#   steps and at every piece of output;
# - size: RENDER_CHARS (2,000,000 characters) for the output and for any one string, list or
#   mapping made on the way (`*`, `+`, `~`, `**`, `%`, calls and filters that take a width),
#   checked before the allocation where the size can be known in advance.
#
# How: `BudgetedEnvironment` (a `SandboxedEnvironment`) rewrites each template before it is
# compiled, so every `for` iterates through a counting wrapper and every `~` concatenation is
# size-checked; it intercepts the arithmetic operators and every call (the sandbox routes
# calls through `call`); and `render_within_budget` takes the output in small batches. A
# budget error is a `jinja2.TemplateRuntimeError` raised inside template code, so it is
# reported as `FILE:LINE: render budget exceeded: ...` like any other render error,
# `templates check` refuses the template, and `serve` keeps the last good set (and stops on
# SIGTERM, because no check can run longer than the budget).

RENDER_SECONDS = 2.0
RENDER_STEPS = 1_000_000
RENDER_CHARS = 2_000_000
_CHECK_TIME_EVERY = 1024  # steps between clock reads (a read costs more than a step)
_BATCH = 32  # output pieces joined at a time before the size is checked
_DICT_ATTRIBUTES = frozenset(dir({}))  # what getattr finds on a dict before its keys
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
    allowance = _CURRENT.get()
    if allowance is not None:
        allowance.step()


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
    """A sandbox whose renders have a budget of steps, time and size ("The render budget")."""

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

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `goal.text` on a plain dict: the sandbox tries the attribute first and takes the
        # item after an AttributeError, which costs more than the rest of the lookup. A key
        # that is not a dict attribute reads the same directly (same value, same undefined).
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

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


def render_within_budget(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """`template.render(context)` within a fresh budget (see "The render budget" above)."""
    allowance = _Budget(RENDER_SECONDS)
    token = _CURRENT.set(allowance)
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
                allowance.check_time()
        except Exception:
            template.environment.handle_exception()  # raises, with template file:line
    finally:
        _CURRENT.reset(token)
    if size > RENDER_CHARS:
        raise _too_big("the output", size)
    return "".join(out)
