"""Compose outgoing mail: render the Jinja2 templates and build the MIME message.

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
every variant with sample data (:func:`sample_context`) and reports each problem as one line
``FILE:LINE: message``; it also looks, without rendering, for unknown variables and unknown keys
in branches the sample data does not reach. :class:`Templates` keeps an in-memory copy of the
last set of files that passed the check: :meth:`Templates.refresh` (called by ``serve``) switches
to edited files only once they pass, and :meth:`Templates.render` always uses the last good set.
"""

from __future__ import annotations

import email.policy
import random
import re
import sys
import traceback
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from mailflow import budget, errors, headers

__all__ = [
    "SHIPPED_DIR",
    "TEMPLATE_NAMES",
    "PARTS",
    "Rendered",
    "TemplateError",
    "Templates",
    "build_message",
    "sample_context",
    "sample_variants",
]

TEMPLATE_NAMES: tuple[str, ...] = (
    "checkin",
    "reminder",
    "digest",
    "no_report",
    "bounce_notice",
    "intro",
    "checkin_ack",
    "receipt",
    "pause_notice",
    "partner_note",
    "summary",
    "consent_notice",
)
"""The templates the sender uses; ``templates preview NAME`` accepts exactly these."""

PARTS: tuple[str, ...] = ("subject", "txt", "html")
"""The three files of one template: ``NAME.subject.j2``, ``NAME.txt.j2``, ``NAME.html.j2``."""

SHIPPED_DIR: Path = Path(__file__).resolve().parent.parent / "templates"
"""The shipped templates: ``templates/`` next to the ``mailflow`` package directory.

mailflow is installed in editable (development) mode from its repository, so the package
directory is ``REPO/mailflow`` and the templates are ``REPO/templates``. ``resolve()`` makes this
independent of the current directory and of symlinks to the module.
"""

REPLY_MARKER = "--- reply above this line ---"
"""First line of the check-in and reminder text: the reply parser cuts quoted history there."""

_TEMPLATE_SUFFIX = ".j2"


def _filename(name: str, part: str) -> str:
    return f"{name}.{part}{_TEMPLATE_SUFFIX}"


def _one_line(text: str) -> str:
    """Collapse all whitespace (newlines included) into single spaces."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Results and errors


@dataclass(frozen=True)
class Rendered:
    """One rendered mail: a one-line subject, the plain-text body and the HTML body."""

    subject: str
    text: str
    html: str


class TemplateError(errors.TemplateError):
    """A template could not be loaded, compiled or rendered.

    ``str(error)`` is a single line ``FILE:LINE: message`` (or ``FILE: message`` when no line
    applies, or just the message when no file does).
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = _one_line(message)
        self.file = file
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"

    def __str__(self) -> str:
        return self._format()


# --------------------------------------------------------------------------------------------
# Sample data (the exact shapes the sender passes)


def _sample_goals() -> list[dict[str, Any]]:
    return [
        {
            "n": 1,
            "due": "2026-11-20",
            "text": "Finish the online course on structuring a talk (all 6 modules).",
            "days_left": -3,
            "overdue": True,
            "done": False,
        },
        {
            "n": 2,
            "due": "2026-11-16",
            "text": "Record myself giving a 5-minute talk and watch it back.",
            "days_left": -7,
            "overdue": False,
            "done": True,
        },
        {
            "n": 3,
            "due": "2026-12-18",
            "text": "Give a 10-minute talk at the team meeting, without notes & with Q&A.",
            "days_left": 25,
            "overdue": False,
            "done": False,
        },
        {
            "n": 4,
            "due": "2026-11-24",
            "text": "Book a slot on the team meeting agenda.",
            "days_left": 1,
            "overdue": False,
            "done": False,
        },
    ]


def _sample_reports(setback: bool, updated: bool) -> list[dict[str, Any]]:
    good = {
        "received_at": "Tuesday 24 November, 18:42 (Europe/Berlin)",
        "text": (
            "Done: Practised the talk twice in front of the mirror and once for my flatmate.\n"
            "Setback: none\n"
            "Next: Ask Bruno for 10 minutes of Q&A practice on Thursday."
        ),
        "done": "Practised the talk twice in front of the mirror and once for my flatmate.",
        "setback_text": "none",
        "next": "Ask Bruno for 10 minutes of Q&A practice on Thursday.",
        "setback": False,
    }
    bad = {
        "received_at": "Thursday 26 November, 21:05 (Europe/Berlin)",
        "text": (
            "Done: One practice run on Monday.\n"
            "Setback: Missed my Wednesday slot, the release slipped and I stayed late "
            "<again>.\n"
            "Next: Two short runs before Friday, one with Bruno."
        ),
        "done": "One practice run on Monday.",
        "setback_text": "Missed my Wednesday slot, the release slipped and I stayed late <again>.",
        "next": "Two short runs before Friday, one with Bruno.",
        "setback": True,
    }
    free_text = {
        "received_at": "Saturday 28 November, 10:15 (Europe/Berlin)",
        "text": "Quick update: I booked the team meeting slot for 16 December.",
        "done": "",
        "setback_text": "",
        "next": "",
        "setback": False,
    }
    reports = [bad] if setback else [good]
    if updated:
        reports = [good, bad] if setback else [good, free_text]
    return reports


def _sample_history(period: str, current: str) -> list[dict[str, Any]]:
    """Week-by-week states from the sample start (2026-W45) up to ``period``, oldest first.

    ``current`` is the state of ``period`` itself (e.g. "pending" before a report arrives).
    """
    states = ["reported", "setback", "paused", "reported", "missed", "reported", "setback"]
    last = int(period.rsplit("W", 1)[1])
    history = []
    for week, state in zip(range(45, last + 1), states, strict=False):
        history.append({"period": f"2026-W{week}", "label": f"W{week}", "state": state})
    history[-1]["state"] = current
    return history


def _intro_goals() -> list[dict[str, Any]]:
    """The sample goals as they stand on the partnership's first day (2026-11-02)."""
    days = {1: 18, 2: 14, 3: 46, 4: 22}
    return [
        {**goal, "days_left": days[goal["n"]], "overdue": False, "done": False}
        for goal in _sample_goals()
    ]


_SAMPLE_VARIANTS: dict[str, tuple[str, ...]] = {
    "intro": ("member", "member accepted", "partner", "partner accepted"),
    "checkin_ack": ("report", "setback", "updated"),
    "receipt": ("done", "problems", "question", "partner"),
    "pause_notice": ("paused", "paused open", "resumed", "stopped"),
    "partner_note": ("note",),
    "summary": ("member", "partner"),
    "consent_notice": ("declined", "declined silently", "no answer"),
}
"""The named sample variants of the newer templates; the first is the default."""


def sample_variants(name: str) -> tuple[str, ...]:
    """The named sample variants of ``name`` (``sample_context(name, variant=...)``)."""
    _require_name(name)
    return _SAMPLE_VARIANTS.get(name, ())


def sample_context(
    name: str, setback: bool = False, updated: bool = False, variant: str | None = None
) -> dict[str, Any]:
    """Realistic sample data for template ``name``, in exactly the shape the sender passes.

    ``setback`` and ``updated`` select the digest variants (a report admitting a setback; an
    update of a digest already sent this period). ``variant`` selects one of
    :func:`sample_variants` for the newer templates (default: the first). Unknown ``name`` or
    ``variant``: :class:`TemplateError`.
    """
    _require_name(name)
    variants = _SAMPLE_VARIANTS.get(name, ())
    if variant is None or variant == "":
        variant = variants[0] if variants else ""
    elif variant not in variants:
        valid = ", ".join(variants) if variants else "none"
        raise TemplateError(f"unknown variant {variant!r} of {name}; valid variants: {valid}")
    service = {
        "name": "mailflow",
        "domain": "mailflow.example.com",
        "from_address": "mailflow@mailflow.example.com",
    }
    if name == "bounce_notice":
        return {
            "service": service,
            "address": "bruno.keller@example.com",
            "reason": "550 5.1.1 <bruno.keller@example.com>: Recipient address rejected: "
            "User unknown in virtual mailbox table",
            "period": "2026-W48",
        }
    if name == "consent_notice":
        declined = variant != "no answer"
        return {
            "service": service,
            "partnership": {"id": 7, "skill": "public speaking"},
            "member": {"name": "Zoë Adler", "email": "zoe.adler@example.com"},
            "partner": {"name": "Bruno Keller", "email": "bruno.keller@example.com"},
            "state": "declined" if declined else "no_answer",
            "days": 2 if declined else 7,
            "text": (
                "Sorry, I can't take this on right now: I'm away most of December <travel>."
                if variant == "declined"
                else ""
            ),
        }
    context: dict[str, Any] = {
        "service": service,
        "member": {
            "name": "Zoë Adler",
            "email": "zoe.adler@example.com",
            "timezone": "Europe/Berlin",
        },
        "partner": {"name": "Bruno Keller", "email": "bruno.keller@example.com"},
        "partnership": {
            "id": 7,
            "skill": "public speaking",
            "why": (
                "I want to present my own team's work at the quarterly review instead of "
                "asking someone else to do it, and to stop dreading the Monday stand-up."
            ),
            "saddle": (
                "One missed week is not a pattern. Pick the smallest next step (five minutes "
                "of practice today) and tell me when it's done. You've done harder things."
            ),
            "start": "2026-11-02",
        },
        "goals": _sample_goals(),
        "period": "2026-W48",
        "period_label": "week 48 of 2026",
        "reply_marker": REPLY_MARKER,
        "reply_address": "checkin+q7Hk2VxP9mR4tW8zL3nB5cD6fG1jA0sE@mailflow.example.com",
    }
    if name in ("checkin", "reminder"):
        context["checkin_at"] = "Monday 23 November, 09:00 (Europe/Berlin)"
    elif name == "digest":
        reports = _sample_reports(setback, updated)
        context["reports"] = reports
        context["setback"] = any(r["setback"] for r in reports)
        context["updated"] = updated
        context["history"] = _sample_history("2026-W48", "setback" if setback else "reported")
    elif name == "no_report":
        context["checkin_at"] = "Monday 23 November, 09:00 (Europe/Berlin)"
        context["deadline_hours"] = 96
        context["history"] = _sample_history("2026-W48", "missed")
    elif name == "intro":
        context["goals"] = _intro_goals()
        context["period"] = "2026-W45"
        context["period_label"] = "week 45 of 2026"
        context["role"] = "partner" if variant.startswith("partner") else "member"
        context["accepted"] = variant.endswith("accepted")
        context["checkin_day"] = "Monday"
        context["checkin_time"] = "09:00"
        context["first_checkin"] = "Monday 9 November, 09:00 (Europe/Berlin)"
    elif name == "checkin_ack":
        context["checkin_at"] = "Monday 23 November, 09:00 (Europe/Berlin)"
        reports = _sample_reports(variant == "setback", variant == "updated")
        # An early report: it arrived before this period's check-in was due.
        times = [
            "Sunday 22 November, 19:58 (Europe/Berlin)",
            "Monday 23 November, 07:41 (Europe/Berlin)",
        ]
        for report, received_at in zip(reports, times, strict=False):
            report["received_at"] = received_at
        context["reports"] = reports
    elif name == "receipt":
        if variant == "done":
            context["done_items"] = ["Paused until 2026-12-14", "Goal 2 marked achieved"]
            context["problems"] = []
            context["question"] = ""
            context["report_stored"] = True
        elif variant == "problems":
            context["done_items"] = ["Goal 2 marked achieved"]
            context["problems"] = [
                'Not understood: "pause til friday" — write "pause until YYYY-MM-DD" or '
                '"pause N weeks"',
                'Not understood: "goal 9 done" — there is no goal 9 (goals 1 to 4)',
            ]
            context["question"] = ""
            context["report_stored"] = True
        elif variant == "question":
            context["done_items"] = []
            context["problems"] = []
            context["question"] = "Reply stop again within 7 days to end this partnership."
            context["report_stored"] = False
        else:  # the partner answered the invitation
            context["done_items"] = ["You accepted. Check-ins for Zoë Adler start on Mondays."]
            context["problems"] = []
            context["question"] = ""
            context["report_stored"] = False
        context["role"] = "partner" if variant == "partner" else "member"
    elif name == "pause_notice":
        context["action"] = variant.split()[0]
        context["until"] = "2026-12-14" if variant == "paused" else ""
    elif name == "partner_note":
        context["received_at"] = "Thursday 26 November, 21:40 (Europe/Berlin)"
        context["note"] = (
            "Zoë, a missed slot in release week is normal. Two short runs are a good plan.\n"
            "I'm free Thursday at 16:00 for the Q&A practice if you want <really>."
        )
    elif name == "summary":
        context["role"] = variant
        if variant == "member":
            context["period"] = "2026-W51"
            context["period_label"] = "week 51 of 2026"
            context["goals"] = [
                {**goal, "days_left": days, "overdue": False, "done": True}
                for goal, days in zip(_sample_goals(), (-26, -30, 2, -22), strict=True)
            ]
            context["reason"] = "all goals achieved"
            context["history"] = _sample_history("2026-W51", "pending")
            context.update(weeks_asked=5, weeks_reported=4, setbacks=1)
            context.update(goals_achieved=4, goals_total=4)
        else:
            context["period"] = "2026-W51"
            context["period_label"] = "week 51 of 2026"
            goals = _sample_goals()
            context["goals"] = [
                {**goal, "days_left": days, "overdue": not goal["done"] and days < 0}
                for goal, days in zip(goals, (-29, -33, -1, -25), strict=True)
            ]
            context["reason"] = "the last due date has passed"
            context["history"] = _sample_history("2026-W51", "setback")
            context.update(weeks_asked=6, weeks_reported=5, setbacks=2)
            context.update(goals_achieved=1, goals_total=4)
    return context


def _variants(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every sample variant of one template, each with a short label for problem reports."""
    if name == "digest":
        return [
            ("report", sample_context(name)),
            ("setback", sample_context(name, setback=True)),
            ("updated", sample_context(name, updated=True)),
            ("updated setback", sample_context(name, setback=True, updated=True)),
        ]
    variants = _SAMPLE_VARIANTS.get(name)
    if variants:
        return [(label, sample_context(name, variant=label)) for label in variants]
    return [("sample", sample_context(name))]


def _require_name(name: str) -> None:
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template {name!r}; valid names: {', '.join(TEMPLATE_NAMES)}")


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
    # The sandbox with a render budget (steps, time, size): see budget.py.
    return budget.BudgetedEnvironment(
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
            template = self.env.get_template(filename)
            return budget.render(template, context)
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
    collapsed = _one_line(subject)
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
    contexts = [ctx for _label, ctx in _variants(name)]
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
        _require_name(name)
        return self._active.render(name, context)

    def check(self) -> list[str]:
        """Check the template files as they are on disk now; ``[]`` when all is well.

        Each problem is one line ``FILE:LINE: message``: syntax errors (in any ``*.j2`` file),
        undefined variables and other render errors in every sample variant, and unknown
        variables or keys in branches the samples do not reach.
        """
        return _check_set(_TemplateSet(self._dirs))

    def preview(self, name: str, setback: bool = False, variant: str | None = None) -> Rendered:
        """Render ``name`` with sample data.

        ``setback`` selects the digest's setback variant; ``variant`` one of
        :func:`sample_variants` for the newer templates (default: the first).
        """
        _require_name(name)
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
            for label, context in _variants(name):
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


# --------------------------------------------------------------------------------------------
# The MIME message

_POLICY = email.policy.SMTP


# Unicode categories Cc, Zl and Zp: control characters and line/paragraph separators.
_HEADER_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_header_value(field: str, value: str) -> str:
    """Refuse control characters (CR, LF, NUL, ...) and Unicode line breaks in a header value."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    found = _HEADER_BREAKERS.search(value)
    if found is not None:
        raise ValueError(f"{field}: control character {found.group()!r} not allowed in a header")
    return value


def _check_msg_id(field: str, value: str) -> str:
    _check_header_value(field, value)
    if not value or any(ch.isspace() for ch in value):
        raise ValueError(f"{field}: not a message id: {value!r}")
    return value


def _address(field: str, addr_spec: str, display_name: str) -> Address:
    _check_header_value(field, addr_spec)
    _check_header_value(field, display_name)
    try:
        address = Address(display_name=display_name, addr_spec=addr_spec)
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"{field}: invalid address {addr_spec!r}: {exc}") from exc
    if not address.username or not address.domain:
        raise ValueError(f"{field}: invalid address {addr_spec!r}")
    return address


# A plain dot-atom address needs none of the header registry's parsing (which costs about
# as much as the rest of a fan-out message's headers); anything else is checked thoroughly.
_PLAIN_ADDR = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$"
)


def _address_tokens(field: str, addr_spec: str, display_name: str) -> list[str]:
    if _PLAIN_ADDR.match(addr_spec):
        _check_header_value(field, display_name)
        return headers.address_tokens(addr_spec, display_name)
    address = _address(field, addr_spec, display_name)
    spec = address.addr_spec
    if not address.domain.isascii():
        # An internationalised domain goes on the wire as its A-label (xn--...).
        spec = spec[: -len(address.domain)] + address.domain.encode("idna").decode("ascii")
    return headers.address_tokens(spec, display_name)


def _header_lines(
    rendered: Rendered,
    *,
    from_address: str,
    from_name: str,
    to_address: str,
    to_name: str,
    message_id: str,
    date: datetime,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> list[str]:
    """Our header lines, folded, in order: the one source for both message paths.

    Every value is checked (control characters refused) and written by `headers`, never
    folded by the email package (see headers.py: CVE-2024-6923).
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("Date: a timezone-aware datetime is required")
    subject = _check_header_value("Subject", rendered.subject)
    lines = [
        headers.fold("From", _address_tokens("From", from_address, from_name)),
        headers.fold("To", _address_tokens("To", to_address, to_name)),
        headers.unstructured("Subject", subject),
        headers.fold("Date", [format_datetime(date)]),
        headers.fold("Message-ID", [_check_msg_id("Message-ID", message_id)]),
    ]
    if reply_to is not None:
        lines.append(headers.fold("Reply-To", _address_tokens("Reply-To", reply_to, "")))
    if in_reply_to is not None:
        lines.append(headers.fold("In-Reply-To", [_check_msg_id("In-Reply-To", in_reply_to)]))
    refs = [_check_msg_id("References", ref) for ref in references]
    if refs:
        lines.append(headers.fold("References", refs))
    lines += [
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0",
    ]
    headers.check_header_block("\r\n".join(lines) + "\r\n", [_name(line) for line in lines])
    return lines


def _name(line: str) -> str:
    return line.split(":", 1)[0]


def build_message(
    rendered: Rendered,
    *,
    from_address: str,
    from_name: str,
    to_address: str,
    to_name: str,
    message_id: str,
    date: datetime,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> EmailMessage:
    """A ``multipart/alternative`` message (text, then HTML; UTF-8, quoted-printable) for SMTP.

    Headers: From and To (display names RFC 2047-encoded when needed), Subject (encoded when
    non-ASCII), Date (``date`` must be timezone-aware), Message-ID exactly as given, Reply-To,
    In-Reply-To and References when given, ``Auto-Submitted: auto-generated``,
    ``X-Auto-Response-Suppress: All`` and ``MIME-Version``. Any header value containing CR, LF
    or another control character raises :class:`ValueError`; the header lines are written by
    :mod:`mailflow.headers` and copied as they are, so no value can add a header line.
    The message uses :data:`email.policy.SMTP` (CRLF line ends).
    """
    lines = _header_lines(
        rendered,
        from_address=from_address,
        from_name=from_name,
        to_address=to_address,
        to_name=to_name,
        message_id=message_id,
        date=date,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=references,
    )
    headers.check_header_block("\r\n".join(lines) + "\r\n", [_name(line) for line in lines])
    msg = EmailMessage(policy=_POLICY)
    for line in lines:
        msg[_name(line)] = headers.Folded(line)
    # quoted-printable: 7-bit safe for any relay, and no body line can exceed SMTP's limit.
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


_PART_HEAD = (
    'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n"
)


def _qp_body(text: str) -> str:
    # Exactly what EmailMessage.set_content(cte="quoted-printable") stores (see
    # email.contentmanager._encode_text), with the generator's CRLF line ends.
    lines = text.encode("utf-8").splitlines()
    data = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), 78)
    parts = _NEWLINES.split(data)
    if not parts[-1]:
        parts.pop()
        return "\r\n".join(parts) + "\r\n"
    return "\r\n".join(parts)


_NEWLINES = re.compile(r"\r\n|\r|\n")


def message_bytes(
    rendered: Rendered,
    *,
    from_address: str,
    from_name: str,
    to_address: str,
    to_name: str,
    message_id: str,
    date: datetime,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> bytes:
    """The wire bytes (CRLF) of :func:`build_message`'s message, the same checks and output.

    A fan-out builds thousands of messages, and the email package's MIME objects cost more
    than rendering the templates: the bytes are written directly, from the same header lines
    (:func:`_header_lines`) and in the form the email package writes the body. The whole
    header section is checked once more as it goes out (exactly our headers, nothing else).
    """
    lines = _header_lines(
        rendered,
        from_address=from_address,
        from_name=from_name,
        to_address=to_address,
        to_name=to_name,
        message_id=message_id,
        date=date,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=references,
    )
    text = _PART_HEAD.format(subtype="plain") + "\r\n" + _qp_body(rendered.text)
    html = _PART_HEAD.format(subtype="html") + "MIME-Version: 1.0\r\n\r\n" + _qp_body(rendered.html)
    boundary = _boundary(text + "\r\n" + html)
    head = "\r\n".join(lines) + (
        f'\r\nContent-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
    )
    headers.check_header_block(head, [*(_name(line) for line in lines), "Content-Type"])
    out = head + f"\r\n--{boundary}\r\n{text}\r\n--{boundary}\r\n{html}\r\n--{boundary}--\r\n"
    return out.encode("ascii")


def _boundary(text: str) -> str:
    # As email.generator.Generator._make_boundary: random, and never a line of the text.
    boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="
    candidate, counter = boundary, 0
    # A substring test first: compiling the line pattern per message cost more than the
    # rest of the boundary work, and a random boundary is practically never in the text.
    while ("--" + candidate) in text and re.search(
        "^--" + re.escape(candidate) + "(--)?$", text, re.MULTILINE
    ):
        candidate = f"{boundary}.{counter}"
        counter += 1
    return candidate
