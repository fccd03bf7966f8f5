"""Command line: parse arguments (click), call the domain, print results.

Every failure a user can cause ends as one `error:` line on stderr and exit status 1 (2 for
usage mistakes); `main()` is the single place that turns exceptions into that line, so no
command prints a traceback for bad input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import click

from mailflow import admin
from mailflow import partnerships as pships
from mailflow.clock import Clock, shifted_clock, system_clock
from mailflow.config import Config, load, templates_override
from mailflow.errors import MailflowError, StartupError, UsageProblem, one_line
from mailflow.models import Partnership, Person
from mailflow.people import (
    CSV_COLUMNS,
    DomainError,
    check_new_people,
    decode_csv,
    delivery_warning,
    import_rows,
    make_person,
    normalize_email,
    normalize_skill,
    offer_directory,
    offer_hint,
    offer_near_miss,
    read_csv,
)
from mailflow.store import Store
from mailflow.wording import count

PROGRESS_BAR_ROWS = 500


@dataclass(frozen=True)
class Edge:
    """What the caller of `main` hands in: the clock and the environment (tests pass theirs)."""

    clock: Clock
    environ: Mapping[str, str]


class App:
    """What a command needs, built lazily so `--help` works without a config.

    `clock` is the one clock of this run: the system clock, or what a test or `--now` gave.
    """

    def __init__(
        self,
        config_path: Path | None,
        clock: Clock,
        environ: Mapping[str, str],
        now_text: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.base_clock = clock
        self.environ = environ
        self.now_text = now_text
        self._config: Config | None = None
        self._store: Store | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load(self.config_path, self.environ)
        return self._config

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.config.service.data_dir)
            self._store.init()
        return self._store

    def now(self) -> datetime:
        """The instant a one-shot command runs at: `--now` if given, else the clock."""
        if self.now_text is not None:
            return parse_instant(self.now_text, self.config.service.timezone, "--now")
        return self.base_clock()

    def running_clock(self) -> Clock:
        """For `serve`: a clock that starts at `--now` (if given) and runs on."""
        if self.now_text is None:
            return self.base_clock
        return shifted_clock(self.now(), self.base_clock)


pass_app = click.make_pass_decorator(App)


def fail(message: str) -> NoReturn:
    """Stop the command with one `error:` line (exit 1); `main` prints it."""
    raise UsageProblem(message)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config file (default: $MAILFLOW_CONFIG, else built-in defaults).",
)
@click.option(
    "--now",
    "now_text",
    default=None,
    metavar="ISO8601",
    help="Run as of this instant (serve: the clock starts there and runs on).",
)
@click.version_option(package_name="mailflow")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, now_text: str | None) -> None:
    """Hot Team accountability partnerships by email."""
    edge = ctx.obj if isinstance(ctx.obj, Edge) else Edge(system_clock, os.environ)
    if config_path is None and edge.environ.get("MAILFLOW_CONFIG"):
        config_path = Path(edge.environ["MAILFLOW_CONFIG"])
    if now_text is not None:
        # Checked before any command runs, so a typo fails fast; the zone of a value without
        # an offset comes from the config, which is read only when the command needs it.
        parse_instant(now_text, "UTC", "--now")
    ctx.obj = App(config_path, edge.clock, edge.environ, now_text)


# -- people ---------------------------------------------------------------------------------


@cli.group()
def people() -> None:
    """Add, list and import people."""


def _person_json(p: Person) -> dict[str, Any]:
    return p.to_doc()


@people.command("add")
@click.argument("email")
@click.option("--name", required=True)
@click.option("--department", required=True)
@click.option("--manager", default=None, help="The manager's email (must already exist).")
@click.option("--timezone", default=None, help="IANA zone, e.g. Europe/Berlin.")
@click.option("--offers", multiple=True, help="A skill this person offers (repeatable).")
@pass_app
def people_add(
    app: App,
    email: str,
    name: str,
    department: str,
    manager: str | None,
    timezone: str | None,
    offers: tuple[str, ...],
) -> None:
    """Add one person."""
    person = make_person(
        email, name, department, manager, timezone, offers, app.config.service.timezone
    )
    with app.store.core_tx() as core:
        problems = check_new_people([person], core.directory)
        if problems:
            fail(problems[0].split(": ", 1)[1])
        near_miss = offer_near_miss(person.offers, core.offered())
        if near_miss:
            fail(near_miss)
        core.put_person(person)
    click.echo(f"added {person.email}")
    _warn_undeliverable(app, [person])


@people.command("update")
@click.argument("email")
@click.option("--name", default=None)
@click.option("--department", default=None)
@click.option("--manager", default=None, help='The manager\'s email ("" removes it).')
@click.option("--timezone", default=None)
@click.option("--offers", multiple=True, help="Replaces the skills offered (repeatable).")
@click.option("--no-offers", is_flag=True, help="Offers nothing any more.")
@click.option("--clear-bouncing", is_flag=True, help="The address works again.")
@pass_app
def people_update(
    app: App,
    email: str,
    name: str | None,
    department: str | None,
    manager: str | None,
    timezone: str | None,
    offers: tuple[str, ...],
    no_offers: bool,
    clear_bouncing: bool,
) -> None:
    """Change a person's fields, or clear the bouncing flag."""
    from mailflow.people import update_person

    addr = normalize_email(email)
    with app.store.core_tx() as core:
        existing = core.directory
        current = existing.get(addr)
        if current is None:
            fail(f"no such person {addr}")
        updated = update_person(
            current,
            existing,
            name=name,
            department=department,
            manager=manager,
            timezone=timezone,
            offers=() if no_offers else (offers or None),
            clear_bouncing=clear_bouncing,
        )
        if updated == current:
            fail("nothing to change (see 'mailflow people update --help')")
        added = [skill for skill in updated.offers if skill not in current.offers]
        near_miss = offer_near_miss(added, core.offered(besides=current))
        if near_miss:
            fail(near_miss)
        core.put_person(updated)
    click.echo(f"updated {addr}")


@people.command("remove")
@click.argument("email")
@click.option(
    "--end-partnerships",
    is_flag=True,
    help="End the person's running partnerships with the removal (else they refuse it).",
)
@pass_app
def people_remove(app: App, email: str, end_partnerships: bool) -> None:
    """Take a person out of the directory (their reports stay on record)."""
    ended = admin.remove_person(app.store, email, app.now(), end_partnerships)
    for pid in ended:
        click.echo(f"ended partnership {pid}")
    click.echo(f"removed {normalize_email(email)}")


@people.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--offers", "skill", default=None, help="Only people who offer this skill.")
@pass_app
def people_list(app: App, as_json: bool, skill: str | None) -> None:
    """List people (or who offers a skill, least busy first)."""
    core = app.store.core()
    everyone = sorted(core.people(), key=lambda p: p.email)
    if skill is not None:
        found = offer_directory(normalize_skill(skill), everyone, core.partnerships())
        if as_json:
            emit_json([{**_person_json(p), "partnerships": n} for p, n in found])
            return
        if not found:
            hint = offer_hint(normalize_skill(skill), everyone)
            click.echo(f"nobody offers {normalize_skill(skill)!r}{hint}")
            return
        _table(
            ["EMAIL", "NAME", "DEPARTMENT", "PARTNERSHIPS"],
            [[p.email, p.name, p.department, str(n)] for p, n in found],
        )
        return
    if as_json:
        emit_json([_person_json(p) for p in everyone])
        return
    _table(
        ["EMAIL", "NAME", "DEPARTMENT", "MANAGER", "TIMEZONE", "OFFERS"],
        [
            [
                p.email,
                p.name,
                p.department,
                p.manager or "-",
                p.timezone,
                ", ".join(p.offers) or "-",
            ]
            for p in everyone
        ],
    )


@people.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--update",
    is_flag=True,
    help="Change people already known to the file's values (else they are refused).",
)
@pass_app
def people_import(app: App, file: Path, update: bool) -> None:
    """Import people from a CSV (email,name,department,manager,timezone,offers).

    All or nothing: every bad row is reported with its line number and none is imported.
    Several offers in one cell are separated by ';'. Files saved by Excel (UTF-8 with a
    byte order mark, Windows-1252, ';' between columns) are read as such, with a note.
    With --update, known people take the file's values; unchanged rows are skipped.
    """
    text, delimiter = _read_csv_file(file, CSV_COLUMNS)
    rows, problems = read_csv(text, delimiter)
    items = (
        click.progressbar(
            rows, label="checking rows", file=sys.stderr, hidden=not sys.stderr.isatty()
        )
        if len(rows) >= PROGRESS_BAR_ROWS
        else _null_bar(rows)
    )
    with app.store.core_tx() as core:
        with items as bar:
            changes, row_problems = import_rows(
                bar, core.directory, core.offered(), app.config.service.timezone, update
            )
        problems = sorted(problems + row_problems, key=lambda s: int(s.split(":", 1)[0]))
        if problems:
            for problem in problems:
                click.echo(f"error: {file}:{problem}", err=True)
            fail(f"{file}: {count(len(problems), 'problem')}; nothing imported")
        if not changes:
            fail(f"{file}: no rows to import (expected columns: {','.join(CSV_COLUMNS)})")
        counts = {kind: 0 for kind in ("added", "updated", "unchanged")}
        for change in changes:
            counts[change.kind] += 1
            if change.kind != "unchanged":
                core.put_person(change.person)
    if update:
        click.echo(", ".join(f"{kind} {n}" for kind, n in counts.items()))
    else:
        click.echo(f"imported {count(counts['added'], 'person')}")
    _warn_undeliverable(app, [c.person for c in changes if c.kind != "unchanged"])


def _read_csv_file(file: Path, columns: Sequence[str]) -> tuple[str, str]:
    """A CSV file's text and delimiter as spreadsheets save it (UTF-8 with or without a byte
    order mark, Windows-1252, UTF-16; `,` `;` or tab), with a `note:` for each guess; the
    one reader of `people import` and `partnerships import`."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror}")
    try:
        text, delimiter, notes = decode_csv(data, columns)
    except MailflowError as exc:
        fail(f"{file}: {exc}")
    for note in notes:
        click.echo(f"note: {file}: {note}", err=True)
    return text, delimiter


def _warn_undeliverable(app: App, people: Sequence[Person]) -> None:
    """A `warning:` line for each person the configured relay cannot deliver to."""
    for person in people:
        why = delivery_warning(person.email, app.config.relay.smtputf8)
        if why is not None:
            click.echo(f"warning: {why}", err=True)


class _null_bar:  # noqa: N801 - stands in for click.progressbar
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __enter__(self) -> Sequence[Any]:
        return self.items

    def __exit__(self, *exc: object) -> None:
        return None


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    for line in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


# -- partnerships -----------------------------------------------------------------------------


@cli.group()
def partnerships() -> None:
    """Create and manage partnerships."""


def partnership_json(p: Partnership) -> dict[str, Any]:
    doc = p.to_doc()
    doc["goals"] = [g.to_doc() for g in p.goals]
    return doc


@partnerships.command("add")
@click.option("--member", required=True)
@click.option("--partner", required=True)
@click.option("--skill", required=True)
@click.option("--goal", "goals", multiple=True, help='"YYYY-MM-DD TEXT" (repeatable).')
@click.option("--why", required=True, help="Why the goals matter.")
@click.option("--saddle", required=True, help="What the partner says after a setback.")
@click.option("--checkin-day", default=None)
@click.option("--checkin-time", default=None, help="HH:MM in the member's time zone.")
@click.option("--start", default=None, help="YYYY-MM-DD (default: today).")
@click.option(
    "--allow-same-line", is_flag=True, help="Allow same department or reporting line (recorded)."
)
@click.option(
    "--accepted",
    is_flag=True,
    help="Record the partner's consent now (else check-ins wait for her yes by email).",
)
@click.option(
    "--allow-past",
    is_flag=True,
    help="Accept goals due before today and a --start before today (e.g. migrating history).",
)
@pass_app
def partnerships_add(
    app: App,
    member: str,
    partner: str,
    skill: str,
    goals: tuple[str, ...],
    why: str,
    saddle: str,
    checkin_day: str | None,
    checkin_time: str | None,
    start: str | None,
    allow_same_line: bool,
    accepted: bool,
    allow_past: bool,
) -> None:
    """Create a partnership, introduce both people by email; prints its id as the last line."""
    member = normalize_email(member, "member")
    partner = normalize_email(partner, "partner")
    with app.store.core_tx() as core:
        skills = core.offered() | {p.skill for p in core.partnerships()}
        near_miss = offer_near_miss([normalize_skill(skill)], skills)
        if near_miss:
            fail("skill: " + near_miss.split(": ", 1)[1])
        p = pships.new_partnership(
            pid=core.next_partnership_id(),
            member=member,
            partner=partner,
            skill=skill,
            goals=goals,
            why=why,
            saddle=saddle,
            people=core.directory,
            existing=core.partnerships(),
            now=app.now(),
            checkin_day=checkin_day,
            checkin_time=checkin_time,
            start=start,
            allow_same_line=allow_same_line,
            accepted=accepted,
            allow_past=allow_past,
        )
        core.put_partnership(p)
    if p.allow_same_line:
        click.echo("note: same department or reporting line allowed by --allow-same-line")
    warning = admin.partner_load_warning(
        app.store, p, app.config.program.max_partnerships_per_partner
    )
    if warning:
        click.echo(warning, err=True)
    try:
        for line in _build(app).jobs.introduce(p.id, app.now()).lines:
            click.echo(line)
    except Exception as exc:  # noqa: BLE001 - the partnership exists; `serve` retries the intro
        click.echo(f"warning: introductions not sent yet ({exc}); serve/tick will retry", err=True)
    click.echo(p.id)


@partnerships.command("approve")
@click.argument("pid")
@pass_app
def partnerships_approve(app: App, pid: str) -> None:
    """Approve a partnership asked for by email (self_service = "approval"): introduce both."""
    p = admin.approve(app.store, _pid(pid))
    click.echo(f"partnership {p.id} approved")
    try:
        for line in _build(app).jobs.introduce(p.id, app.now()).lines:
            click.echo(line)
    except Exception as exc:  # noqa: BLE001 - approved; `serve` sends the intro at its tick
        click.echo(f"warning: introductions not sent yet ({exc}); serve/tick will retry", err=True)


@partnerships.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def partnerships_import(app: App, file: Path) -> None:
    """Create partnerships from a CSV (member,partner,skill,goal_due,goal,why,saddle,start,
    checkin_day,checkin_time,accepted): one goal per row; rows with the same member and skill
    are one partnership.

    All or nothing, with the checks of 'partnerships add': every bad row is reported with its
    line number and none is created. Introductions go out with the next tick (serve), through
    the outbox like any other mail.
    """
    text, delimiter = _read_csv_file(file, pships.IMPORT_COLUMNS)
    groups, problems = pships.read_import_csv(text, delimiter)
    now = app.now()
    created: list[Partnership] = []
    items = (
        click.progressbar(
            groups, label="checking partnerships", file=sys.stderr, hidden=not sys.stderr.isatty()
        )
        if sum(len(g.lines) for g in groups) >= PROGRESS_BAR_ROWS
        else _null_bar(groups)
    )
    with app.store.core_tx() as core:
        mine: dict[str, list[Partnership]] = {}
        for p in core.partnerships():
            mine.setdefault(p.member, []).append(p)
        pid = core.next_partnership_id()
        skills = core.offered() | {p.skill for p in core.partnerships()}
        with items as bar:
            for group in bar:
                try:
                    near_miss = offer_near_miss([normalize_skill(group.fields["skill"])], skills)
                    if near_miss:
                        raise DomainError("skill: " + near_miss.split(": ", 1)[1])
                    p = pships.import_partnership(
                        group,
                        pid=pid,
                        people=core.directory,
                        existing=mine.get(group.fields["member"], []),
                        now=now,
                    )
                except DomainError as exc:
                    problems.append(f"{group.lines[0]}: {exc}")
                    continue
                created.append(p)
                skills.add(p.skill)
                pid += 1
        if problems:
            problems.sort(key=lambda s: int(s.split(":", 1)[0]))
            for problem in problems:
                click.echo(f"error: {file}:{problem}", err=True)
            fail(f"{file}: {count(len(problems), 'problem')}; nothing imported")
        if not created:
            fail(f"{file}: no rows to import (expected columns: {','.join(pships.IMPORT_COLUMNS)})")
        for p in created:
            core.put_partnership(p)
    goals = sum(len(p.goals) for p in created)
    click.echo(
        f"imported {count(len(created), 'partnership')} ({count(goals, 'goal')}), "
        + (f"id {created[0].id}" if len(created) == 1 else f"ids {created[0].id}-{created[-1].id}")
        + "; introductions go out with the next tick"
    )


def _pid(pid: str) -> int:
    try:
        return int(pid)
    except ValueError:
        fail(f'partnership id must be a number, got "{pid}"')


@partnerships.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def partnerships_list(app: App, as_json: bool) -> None:
    """List partnerships."""
    items = app.store.core().partnerships()
    if as_json:
        emit_json([partnership_json(p) for p in items])
        return
    _table(
        ["ID", "STATUS", "CONSENT", "MEMBER", "PARTNER", "SKILL", "GOALS", "LAST DUE"],
        [
            [
                str(p.id),
                p.status + (f" until {p.paused_until}" if p.paused_until else ""),
                p.consent,
                p.member,
                p.partner,
                p.skill,
                str(len(p.goals)),
                max(g.due for g in p.goals).isoformat(),
            ]
            for p in items
        ],
    )


@partnerships.command("show")
@click.argument("pid", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def partnerships_show(app: App, pid: str, as_json: bool) -> None:
    """Show one partnership with its goals and reports."""
    p = admin.partnership(app.store, _pid(pid))
    reports = admin.reports(app.store, p.id)
    if as_json:
        emit_json({**partnership_json(p), "reports": reports})
        return
    member = app.store.core().person(p.member)
    zone = member.timezone if member else app.config.service.timezone
    today = app.now().astimezone(ZoneInfo(zone)).date()
    click.echo(f"partnership {p.id}: {p.member} learns {p.skill!r} from {p.partner}")
    status = p.status + (f" until {p.paused_until}" if p.paused_until else "")
    click.echo(f"status: {status}; consent {p.consent}; start {p.start}")
    click.echo(f"check-in: {_checkin_moment(app, p, zone)}")
    if p.allow_same_line:
        click.echo("override: same department or reporting line allowed (--allow-same-line)")
    click.echo("goals:")
    for g in p.goals:
        left = (g.due - today).days
        state = (
            "done"
            if g.done_on
            else (
                f"{count(left, 'day')} left" if left >= 0 else f"overdue by {count(-left, 'day')}"
            )
        )
        click.echo(f"  {g.n}. {g.due}  {g.text}  ({state})")
    click.echo(f"why: {p.why}")
    click.echo(f"back in the saddle: {p.saddle}")
    click.echo(f"reports: {len(reports)}")
    for r in reports:
        flag = " SETBACK" if r["setback"] else ""
        first = r["text"].splitlines()[0] if r["text"] else ""
        click.echo(f"  {r['period']}  {r['received_at']}{flag}  {first[:60]}")


def _checkin_moment(app: App, p: Partnership, zone: str) -> str:
    """The effective check-in moment ("Monday 09:00 Europe/Rome (the member's time)"),
    saying which of day and time come from the configuration."""
    sc = app.config.schedule
    day = (p.checkin_day or sc.checkin_day).title()
    at = p.checkin_time or sc.checkin_time
    defaults = [n for n, own in (("day", p.checkin_day), ("time", p.checkin_time)) if not own]
    note = f"; {' and '.join(defaults)} from the configuration" if defaults else ""
    return f"{day} {at} {zone} (the member's time{note})"


@partnerships.command("resend-intro")
@click.argument("pid", metavar="ID")
@click.option(
    "--to",
    "to",
    type=click.Choice(["partner", "member", "both"]),
    default="partner",
    show_default=True,
    help="Who gets the introduction again.",
)
@pass_app
def partnerships_resend_intro(app: App, pid: str, to: str) -> None:
    """Send a partnership's introduction again (it bounced, or was lost)."""
    for line in admin.resend_intro(_build(app).mailroom, _pid(pid), app.now(), to).lines:
        click.echo(line)


@partnerships.command("consent")
@click.argument("pid", metavar="ID")
@click.option("--accepted", is_flag=True, help="The partner said yes.")
@click.option("--declined", is_flag=True, help="The partner said no.")
@click.option("--note", default="", help="What the partner said (kept with a decline).")
@pass_app
def partnerships_consent(app: App, pid: str, accepted: bool, declined: bool, note: str) -> None:
    """Record the partner's answer that reached you another way; both people are told."""
    if accepted == declined:  # neither, or both: one flag's value must not win silently
        raise click.UsageError("say which: --accepted or --declined (one of them)")
    answer = "accepted" if accepted else "declined"
    text = pships.check_text("note", note, required=False, limit=pships.LONG_TEXT)
    mailroom = _build(app).mailroom
    report = admin.record_consent(mailroom, _pid(pid), answer == "accepted", app.now(), text)
    for line in report.lines:
        click.echo(line)


@partnerships.command("pause")
@click.argument("pid", metavar="ID")
@click.option("--until", default=None, help="YYYY-MM-DD: resumes by itself on this date.")
@pass_app
def partnerships_pause(app: App, pid: str, until: str | None) -> None:
    """Pause check-ins."""
    until_date = pships.parse_date(until, "until") if until else None
    tz = app.config.service.timezone
    updated = admin.pause(app.store, _pid(pid), until_date, app.now(), tz)
    click.echo(f"paused {updated.id}" + (f" until {until_date}" if until_date else ""))


@partnerships.command("resume")
@click.argument("pid", metavar="ID")
@pass_app
def partnerships_resume(app: App, pid: str) -> None:
    """Resume check-ins."""
    updated = admin.resume(app.store, _pid(pid))
    click.echo(f"resumed {updated.id}")


@partnerships.command("end")
@click.argument("pid", metavar="ID")
@pass_app
def partnerships_end(app: App, pid: str) -> None:
    """End a partnership for good."""
    updated = admin.end(app.store, _pid(pid), app.now())
    click.echo(f"ended {updated.id}")


# -- templates ------------------------------------------------------------------------------


@cli.group()
def templates() -> None:
    """Check and preview the mail templates."""


def _templates(app: App) -> Any:
    from mailflow.compose import Templates

    return Templates(templates_override(app.config))


@templates.command("check")
@pass_app
def templates_check(app: App) -> None:
    """Render every template with sample data; report FILE:LINE: message."""
    templates = _templates(app)
    for stray in templates.strays():
        click.echo(f"warning: {stray}", err=True)
    problems = templates.check()
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        fail(count(len(problems), "template problem"))
    click.echo("templates ok")


@templates.command("preview")
@click.argument("name")
@click.option("--setback", is_flag=True, help="The setback variant (digest only).")
@click.option("--variant", default=None, help="Another sample variant, e.g. 'partner'.")
@pass_app
def templates_preview(app: App, name: str, setback: bool, variant: str | None) -> None:
    """Print the rendered text version of template NAME."""
    from mailflow.samples import SETBACK_TEMPLATES, sample_variants

    if setback and name not in SETBACK_TEMPLATES:
        own = "setback" in sample_variants(name)  # (an unknown name says so first)
        raise click.UsageError(
            f"--setback applies only to {', '.join(SETBACK_TEMPLATES)}, not {name}"
            + (" (its setback sample: --variant setback)" if own else "")
        )
    rendered = _templates(app).preview(name, setback=setback, variant=variant)
    click.echo(f"Subject: {rendered.subject}\n")
    click.echo(rendered.text.rstrip("\n"))


# -- replies --------------------------------------------------------------------------------


@cli.group()
def reply() -> None:
    """Understand inbound replies."""


@reply.command("parse")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")
def reply_parse(file: Path, as_json: bool) -> None:
    """Parse one raw message (RFC 5322 file) the way the listener does.

    A spooled, quarantined or archived file (data_dir/spool/new/, quarantine/, mail/in/) is
    read as the raw message it holds, after its MFSPOOL1 envelope line.
    """
    from mailflow.parse import parse_message
    from mailflow.spool import raw_message

    try:
        raw = raw_message(file.read_bytes())
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror}")
    parsed = parse_message(raw)
    if as_json:
        click.echo(json.dumps(parsed.to_json_dict(), ensure_ascii=False))
        return
    _print_parsed(parsed)


def _print_parsed(parsed: Any, indent: str = "") -> None:
    """The parser's answer as `reply parse` prints it without --json."""
    click.echo(f"{indent}kind: {parsed.kind} ({parsed.detail})")
    if parsed.kind == "reply":
        click.echo(f"{indent}setback: {'yes' if parsed.setback else 'no'}")
    for key, value in parsed.sections.items():
        if value:
            click.echo(f"{indent}{key}: {value}")
    click.echo(f"{indent}text:")
    for line in parsed.text.splitlines() or [""]:
        click.echo(f"{indent}  {line}")


# -- quarantine -------------------------------------------------------------------------------


@cli.group()
def quarantine() -> None:
    """Mail set aside for a person to decide: list, show, release, drop."""


def _admin_name(app: App) -> str:
    """Who decides, for the record: the login name, from the command line."""
    user = app.environ.get("USER") or app.environ.get("LOGNAME") or "an admin"
    return f"{user} (command line)"


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def quarantine_list(app: App, as_json: bool) -> None:
    """Every quarantined message, oldest first: id, received, sender, partnership, reason."""
    from mailflow import quarantine as desk

    parts = _build(app)
    found = desk.items(parts.spool, parts.svc.keys)
    if as_json:
        emit_json([item.to_json() for item in found])
        return
    if not found:
        click.echo("the quarantine is empty")
        return
    _table(
        ["ID", "RECEIVED", "SENDER", "PARTNERSHIP", "REASON"],
        [
            [
                item.id,
                item.received_at.isoformat(timespec="minutes") if item.received_at else "?",
                item.sender or "-",
                _partnership_cell(item.partnership_id, item.period),
                item.reason,
            ]
            for item in found
        ],
    )


def _partnership_cell(pid: int | None, period: str | None) -> str:
    return "-" if pid is None else f"{pid} {period or ''}".rstrip()


@quarantine.command("show")
@click.argument("qid", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def quarantine_show(app: App, qid: str, as_json: bool) -> None:
    """One quarantined message: why it is here and what the parser reads in it."""
    from mailflow import quarantine as desk

    parts = _build(app)
    shown = desk.show(parts.spool, parts.svc.keys, qid)
    if as_json:
        emit_json(shown.to_json())
        return
    item = shown.item
    click.echo(f"id: {item.id}")
    click.echo(f"received: {item.received_at.isoformat() if item.received_at else '?'}")
    click.echo(f"reason: {item.reason}")
    if item.partnership_id is not None:
        click.echo(f"partnership: {item.partnership_id} {item.period or ''}".rstrip())
    for name, value in shown.headers:
        click.echo(f"{name.lower()}: {value}")
    click.echo("parsed:")
    _print_parsed(shown.parsed, "  ")


@quarantine.command("release")
@click.argument("qid", metavar="ID")
@pass_app
def quarantine_release(app: App, qid: str) -> None:
    """Count it after all: a report counts for its period and the partner gets the digest now."""
    from mailflow import quarantine as desk

    done = desk.release(_build(app).intake, qid, app.now(), _admin_name(app))
    click.echo(f"released {qid}")
    if done.not_run:
        click.echo(f"not run (sent from {done.item.sender}): " + "; ".join(done.not_run))
    for line in done.lines:
        click.echo(line)


@quarantine.command("drop")
@click.argument("qid", metavar="ID")
@pass_app
def quarantine_drop(app: App, qid: str) -> None:
    """Delete a quarantined message for good."""
    from mailflow import quarantine as desk

    item = desk.drop(_build(app).spool, qid, app.now(), _admin_name(app))
    click.echo(f"dropped {item.id} (from {item.sender or 'nobody'}: {item.reason})")


# -- the week -------------------------------------------------------------------------------


def _build(app: App) -> Any:
    """The parts of mailflow (`mailflow.app.build`), imported only by commands that run them."""
    from mailflow.app import build

    return build(app.config)


def parse_instant(value: str, zone: str, option: str) -> datetime:
    """An ISO 8601 instant as aware UTC; without an offset it is read in `zone`."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        fail(f'{option}: expected ISO 8601 like 2026-11-30T09:00:00+01:00, got "{value}"')
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(zone))
    return dt.astimezone(UTC)


def parse_now(value: str | None, app: App) -> datetime:
    """A command's own --now (ISO 8601; without an offset, the service's zone), else app.now()."""
    if value is None:
        return app.now()
    return parse_instant(value, app.config.service.timezone, "--now")


@cli.command()
@click.option("--now", "now_text", default=None, help="ISO 8601 instant (default: the clock).")
@pass_app
def tick(app: App, now_text: str | None) -> None:
    """Run every job due at NOW once, print what was done, exit."""
    now = parse_now(now_text, app)
    parts = _build(app)
    problems = parts.templates.check()
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        fail("templates have errors; nothing sent")
    # The report says what failed, one line each: no log record (nor its traceback) goes
    # to stderr through logging's last-resort handler.
    logging.getLogger("mailflow").addHandler(logging.NullHandler())
    report = parts.tick(now)
    for line in report.entries:
        click.echo(line.text, err=line.kind != "done")
    if not report.lines:
        click.echo("nothing due")
    if report.errors:
        # Each already said what failed; the exit status tells a cron job or a script.
        raise click.exceptions.Exit(1)


@cli.command()
@pass_app
def serve(app: App) -> None:
    """Listener, scheduler and sender until SIGINT/SIGTERM."""
    import logging
    import threading

    from mailflow.app import install_signal_handlers
    from mailflow.app import serve as serve_app

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parts = _build(app)
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        # The admin site starts inside, once the mail service passed its own start checks.
        serve_app(parts, app.running_clock(), stop)
    except OSError as exc:  # the data directory or a port: before anything ran
        raise StartupError(f"cannot start: {exc}") from None


@cli.group(invoke_without_command=True)
@click.pass_context
def web(ctx: click.Context) -> None:
    """The admin site alone, until SIGINT/SIGTERM (`serve` also serves it)."""
    if ctx.invoked_subcommand is not None:
        return
    import logging
    import threading

    from mailflow.app import install_signal_handlers
    from mailflow.web import site_url

    app = ctx.find_object(App)
    assert app is not None
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    install_signal_handlers(stop)
    # Safe next to `serve`: every change goes through the same store, spool and outbox locks.
    # A port that is taken is a StartupError: one `error:` line, exit 1.
    site = _build(app).start_site(app.running_clock())
    click.echo(f"admin site on {site_url(app.config)} (sign in: mailflow web link EMAIL)")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        site.stop()


@web.command("link")
@click.argument("email")
@pass_app
def web_link(app: App, email: str) -> None:
    """Print a one-time sign-in link for EMAIL (15 minutes), as Jupyter prints its token URL.

    EMAIL must be in [web] admins; with no admins configured (the embedded default), whoever
    can run this command on the server may sign in.
    """
    from mailflow.web import site_url
    from mailflow.webadmin import WebAdmin
    from mailflow.webauth import Auth, derive_key

    address = normalize_email(email)
    admins = app.config.web.admins
    if admins and address not in admins:
        fail(f"{address} is not in web.admins ({', '.join(admins)})")
    desk = WebAdmin(_build(app))
    now = app.now()
    token = Auth(desk.state_dir, derive_key(desk.secret)).issue_link(address, now)
    desk.record(now, address, "sign-in link printed", "", "by `mailflow web link` on the server")
    click.echo(f"{site_url(app.config)}/signin/{token}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--now", "now_text", default=None, help="ISO 8601 instant (default: the clock).")
@pass_app
def status(app: App, as_json: bool, now_text: str | None) -> None:
    """This period: sent, replied, setbacks, missing, bouncing, quarantined, outgoing."""
    data = _build(app).status(parse_now(now_text, app))
    if as_json:
        emit_json(data)
        return
    click.echo(f"partnerships: {data['partnerships']} ({data['paused']} paused)")
    click.echo(
        f"check-ins sent: {data['sent']}  replied: {data['replied']}  "
        f"setbacks: {data['setbacks']}  waiting: {data['waiting']}  "
        f"missing: {data['missing']}"
    )
    click.echo(
        f"bouncing: {len(data['bouncing'])}"
        + (f" ({', '.join(data['bouncing'])})" if data["bouncing"] else "")
    )
    click.echo(
        f"consent pending: {len(data['consent_pending'])}  declined: "
        f"{len(data['consent_declined'])}  no answer in time: {len(data['consent_overdue'])}"
    )
    senders = data["quarantined_senders"]
    click.echo(
        f"quarantined: {data['quarantined']}"
        + (f" (from {', '.join(senders)})" if senders else "")
        + f"  spooled: {data['spooled']}"
    )
    held, lc = data["held"], app.config.listener
    click.echo(
        f"held (waiting or quarantined): {count(held['messages'], 'message')}, "
        f"{held['bytes'] / 1048576:.1f} MB (quotas: {lc.quarantine_max_per_sender} per sender, "
        f"{lc.quarantine_max_mb} MB in all; over them the listener answers 452)"
    )
    refused = data["refused"]
    if refused.get("counts"):
        counts = ", ".join(f"{reason} {n}" for reason, n in refused["counts"].items())
        click.echo(f"refused by the listener since {refused['since']}: {counts}")
    click.echo(f"outgoing queued: {data['outgoing_queued']}  failed: {data['outgoing_failed']}")
    strangers = data["program_strangers"]
    click.echo(
        f"awaiting approval: {len(data['awaiting_approval'])}  mail to the program address "
        f"from outside the directory since {strangers['since']}: {strangers['count']}"
    )
    for item in data["failed"]:
        click.echo(f"  failed {item['key']} to {item['to']}: {item['error']}")
    for item in data["quarantine"]:
        sender = item["sender"] or "nobody"
        click.echo(f"  quarantined {item['id']} from {sender}: {item['reason']}")


@cli.command()
@pass_app
def demo(app: App) -> None:
    """A whole week in simulated time, in a temporary data dir."""
    from mailflow.demo import run_demo

    run_demo(click.echo, app.now())


# -- partners and export ----------------------------------------------------------------------


@cli.group()
def partners() -> None:
    """Find partners for a member."""


@partners.command("suggest")
@click.option("--member", required=True, help="The member's email.")
@click.option("--skill", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def partners_suggest(app: App, member: str, skill: str, as_json: bool) -> None:
    """Eligible people who offer SKILL, fewest active partnerships first."""
    from mailflow.suggest import suggest_partners

    member = normalize_email(member, "member")
    core = app.store.core()
    cap = app.config.program.max_partnerships_per_partner
    # The offerers come from the skill's index: the directory is looked up, not read whole.
    offerers = core.directory.offerers(normalize_skill(skill))
    found = [
        s
        for s in suggest_partners(
            member, skill, core.directory, core.partnerships(), offerers=offerers
        )
        if s.active_partnerships < cap
    ]
    if as_json:
        emit_json(
            [
                {**_person_json(s.person), "active_partnerships": s.active_partnerships}
                for s in found
            ]
        )
        return
    if not found:
        click.echo(
            f"no eligible partner offers {normalize_skill(skill)!r} for {member} "
            f"(below max_partnerships_per_partner, {cap})"
        )
        return
    _table(
        ["EMAIL", "NAME", "DEPARTMENT", "PARTNERSHIPS"],
        [
            [s.person.email, s.person.name, s.person.department, str(s.active_partnerships)]
            for s in found
        ],
    )


@cli.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option("--since", default=None, help="YYYY-MM-DD: records received (UTC) on or after.")
@pass_app
def export_cmd(app: App, fmt: str, since: str | None) -> None:
    """Every progress record, one row each, oldest first, to stdout."""
    from mailflow.export import export_rows, write_csv, write_json

    # Parsed before touching the store, so a typo fails fast with one `error:` line.
    since_date = pships.parse_date(since, "--since") if since is not None else None
    store = app.store
    by_id = {p.id: p for p in store.core().partnerships()}
    rows = export_rows(by_id, store.reports(since=since_date), since_date)
    (write_csv if fmt == "csv" else write_json)(rows, sys.stdout)


# -- entry point ------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    clock: Clock = system_clock,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the CLI; the one place exceptions become `error:` lines and exit codes.

    `clock` and `environ` are the edge: the system clock and `os.environ` unless a caller (a
    test, the demo) hands in its own. Nothing below reads either directly.
    """
    env = os.environ if environ is None else environ
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="mailflow",
            standalone_mode=False,
            obj=Edge(clock, env),
        )
        # Not standalone, click hands a command's `Exit(n)` back as n (tick's errors: 1).
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        hint = (
            f" (see 'mailflow {exc.ctx.command_path.split(' ', 1)[1]} --help')"
            if (exc.ctx and " " in exc.ctx.command_path)
            else " (see 'mailflow --help')"
        )
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 1
    except MailflowError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # `mailflow export | head`: the reader went away; that is not an error of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stops the flush at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if env.get("MAILFLOW_DEBUG"):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        return 1


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
