"""People: address and field rules, CSV files and rows, reporting lines and the offers directory.

Pure functions over plain data: callers pass the people that exist, these functions say
what is wrong (as `DomainError`) or compute an answer. Nothing here reads files or clocks:
`decode_csv` gets a file's bytes, `import_rows` the rows and the directory as it is, and
says what an import would change (added / updated / unchanged) and every problem.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from email_validator import EmailNotValidError, validate_email

from mailflow import hints
from mailflow.addresses import SMTPUTF8_NEEDED, canonical, needs_smtputf8
from mailflow.config import check_timezone
from mailflow.errors import DomainError
from mailflow.mime import has_encoded_word
from mailflow.models import ENDED, Partnership, Person

# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators: any of them in a
# field that ends up in a header could split it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_FIELD = 200
CSV_COLUMNS = ("email", "name", "department", "manager", "timezone", "offers")


def check_text(field: str, value: str, *, required: bool = True, limit: int = MAX_FIELD) -> str:
    """Strip a free-text field and refuse control characters and RFC 2047 encoded words.

    Both are header injection: a field may reach a Subject or a display name, and Python's
    email package (3.11.7, CVE-2024-6923) decodes an encoded word there into a raw CR/LF.
    No real name, department, skill or goal is written as `=?charset?q?...?=`.
    """
    if _CONTROL.search(value):
        raise DomainError(f"{field}: control characters (such as CR/LF) are not allowed")
    if has_encoded_word(value):
        raise DomainError(f"{field}: encoded-word syntax (=?...?=) is not allowed")
    value = value.strip()
    if required and not value:
        raise DomainError(f"{field}: must not be empty")
    if len(value) > limit:
        raise DomainError(f"{field}: too long ({len(value)} characters, at most {limit})")
    return value


def normalize_email(value: str, field: str = "email") -> str:
    """Validate syntax (no DNS) and return the normalised, lower-cased address."""
    if _CONTROL.search(value):
        raise DomainError(f"{field}: control characters (such as CR/LF) are not allowed")
    if has_encoded_word(value):
        raise DomainError(f"{field}: encoded-word syntax (=?...?=) is not allowed")
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise DomainError(f'{field}: invalid address "{value.strip()}": {exc}') from None
    # Mail systems treat the local part case-insensitively in practice; matching a reply's
    # From against a member must not fail on "Anna@" vs "anna@".
    # The domain in Unicode (U-labels), whichever spelling was typed: one person, one key.
    return canonical(result.normalized)


def delivery_warning(email: str, smtputf8: str) -> str | None:
    """Why mail to `email` cannot be delivered with `[relay] smtputf8` set so, or None.

    Only a non-ASCII local part needs SMTPUTF8 (an IDN domain travels as A-labels), and only
    "never" rules it out up front; under "auto" the relay's EHLO decides at sending time.
    """
    if smtputf8 == "never" and needs_smtputf8(email):
        return f'{email}: {SMTPUTF8_NEEDED}, and [relay] smtputf8 = "never": mail to it will fail'
    return None


def normalize_skill(value: str, field: str = "skill") -> str:
    skill = " ".join(check_text(field, value, limit=80).split()).lower()
    if any(c in skill for c in ",;|"):
        raise DomainError(f"{field}: may not contain , ; or |")
    return skill


def make_person(
    email: str,
    name: str,
    department: str,
    manager: str | None,
    timezone: str | None,
    offers: Iterable[str],
    default_timezone: str,
) -> Person:
    """Check and normalise every field of a new person (not yet against other people)."""
    addr = normalize_email(email)
    mgr = normalize_email(manager, "manager") if manager and manager.strip() else None
    if mgr == addr:
        raise DomainError(f"manager: {addr} cannot be their own manager")
    # Refused like in every other field: strip() would otherwise quietly accept "UTC\n".
    if timezone and _CONTROL.search(timezone):
        raise DomainError("timezone: control characters (such as CR/LF) are not allowed")
    tz = (timezone or "").strip() or default_timezone
    try:
        check_timezone(tz)
    except ValueError as exc:
        raise DomainError(f"timezone: {exc}") from None
    skills: list[str] = []
    for raw in offers:
        skill = normalize_skill(raw, "offers")
        if skill not in skills:
            skills.append(skill)
    return Person(
        email=addr,
        name=check_text("name", name),
        department=check_text("department", department),
        manager=mgr,
        timezone=tz,
        offers=tuple(skills),
    )


def check_new_people(new: Sequence[Person], existing: Mapping[str, Person]) -> list[str]:
    """Every problem with adding `new` to `existing`, as messages (index-aligned prefix).

    Returns "ROW: message" strings where ROW is the 0-based index in `new`.
    Managers may be other new people (in any order); cycles are refused.
    """
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, person in enumerate(new):
        if person.email in existing:
            problems.append(f"{i}: {person.email} already exists")
        elif person.email in seen:
            problems.append(f"{i}: {person.email} appears twice in the file")
        else:
            seen[person.email] = i
    # Lookups only: `existing` may be the store's directory, read shard by shard.
    everyone = ChainMap({p.email: p for p in new}, existing)
    for i, person in enumerate(new):
        if person.manager and person.manager not in everyone:
            problems.append(f"{i}: manager {person.manager} does not exist")
    for i, person in enumerate(new):
        if person.manager and _in_cycle(person.email, everyone):
            problems.append(f"{i}: manager chain of {person.email} loops back to itself")
    return problems


def update_person(
    current: Person,
    existing: Mapping[str, Person],
    *,
    name: str | None = None,
    department: str | None = None,
    manager: str | None = None,
    timezone: str | None = None,
    offers: Iterable[str] | None = None,
    clear_bouncing: bool = False,
) -> Person:
    """`current` with the given fields changed, checked like a new person.

    `manager=""` removes the manager; a manager must exist and may not close a loop.
    """
    updated = make_person(
        current.email,
        current.name if name is None else name,
        current.department if department is None else department,
        current.manager if manager is None else (manager or None),
        current.timezone if timezone is None else timezone,
        current.offers if offers is None else offers,
        current.timezone,
    )
    if updated.manager and updated.manager not in existing:
        raise DomainError(f"manager: {updated.manager} does not exist")
    if updated.manager and _in_cycle(updated.email, ChainMap({updated.email: updated}, existing)):
        raise DomainError(f"manager: {updated.manager} would make a loop in the manager chain")
    bouncing = current.bouncing and not clear_bouncing
    return replace(
        updated, bouncing=bouncing, bounce_reason=current.bounce_reason if bouncing else ""
    )


def _in_cycle(email: str, people: Mapping[str, Person]) -> bool:
    seen = {email}
    current = people.get(email)
    while current is not None and current.manager:
        if current.manager in seen:
            return current.manager == email
        seen.add(current.manager)
        current = people.get(current.manager)
    return False


def manager_chain(email: str, people: Mapping[str, Person]) -> list[str]:
    """Managers above `email`, nearest first (stops safely on a loop)."""
    chain: list[str] = []
    current = people.get(email)
    while current is not None and current.manager and current.manager not in chain:
        chain.append(current.manager)
        current = people.get(current.manager)
    return chain


def same_line(a: str, b: str, people: Mapping[str, Person]) -> bool:
    """True when either person is in the other's management chain, at any depth."""
    return b in manager_chain(a, people) or a in manager_chain(b, people)


def eligibility_problems(member: str, partner: str, people: Mapping[str, Person]) -> list[str]:
    """Why `partner` may not partner `member` under the default rules (empty: eligible)."""
    if member == partner:
        return ["member and partner must be different people"]
    problems = []
    m, p = people[member], people[partner]
    if m.department.casefold() == p.department.casefold():
        problems.append(f"member and partner are both in department {m.department!r}")
    if same_line(member, partner, people):
        problems.append("member and partner are in the same reporting line")
    return problems


@dataclass(frozen=True)
class CsvRow:
    line: int
    fields: dict[str, str]


def read_csv(text: str, delimiter: str = ",") -> tuple[list[CsvRow], list[str]]:
    """Rows of a people CSV (header required) and any structural problems as 'LINE: msg'."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if not header:
        return [], ["1: empty file (expected a header: " + ",".join(CSV_COLUMNS) + ")"]
    missing = [c for c in ("email", "name", "department") if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(missing))
        if unknown:
            parts.append("unknown column(s) " + ", ".join(unknown))
        return [], [f"1: {'; '.join(parts)} (expected: {','.join(CSV_COLUMNS)})"]
    reader.fieldnames = header
    rows: list[CsvRow] = []
    problems: list[str] = []
    try:
        for record in reader:
            line = reader.line_num
            if None in record:
                problems.append(f"{line}: too many fields")
                continue
            if not any((v or "").strip() for v in record.values()):
                continue  # a row of empty cells (",,,", as Excel saves a cleared row) is blank
            rows.append(CsvRow(line, {k: (v or "") for k, v in record.items()}))
    except csv.Error as exc:
        problems.append(f"{reader.line_num}: {exc}")
    return rows, problems


def split_offers(value: str) -> list[str]:
    return [s for s in (part.strip() for part in re.split(r"[;|]", value)) if s]


def offer_directory(
    skill: str, people: Iterable[Person], partnerships: Iterable[Partnership]
) -> list[tuple[Person, int]]:
    """Who offers `skill`, with how many partnerships each carries as partner (not ended)."""
    load: dict[str, int] = {}
    for p in partnerships:
        if p.status != ENDED:
            load[p.partner] = load.get(p.partner, 0) + 1
    found = [(person, load.get(person.email, 0)) for person in people if skill in person.offers]
    return sorted(found, key=lambda item: (item[1], item[0].email))


# -- CSV files as spreadsheets save them --------------------------------------------------------

EXCEL_UTF8 = 'save it from Excel as "CSV UTF-8 (Comma delimited)" and import that file'


def decode_csv(data: bytes, columns: Sequence[str] = CSV_COLUMNS) -> tuple[str, str, list[str]]:
    """A CSV file's text, its delimiter and notes on what was guessed (`columns`: the header's
    known names; both `people import` and `partnerships import` read their files here).

    UTF-8 (with or without Excel's byte order mark) is read as it is. UTF-16 with a byte
    order mark (Excel's "Unicode Text", tab-separated) is read too. Other bytes are read as
    Windows-1252, what Excel's "CSV (Comma delimited)" writes on Windows, with a note to
    check the names; bytes that are not Windows-1252 either are refused (DomainError) with
    what they look like and what to do. The delimiter is the one of `,` `;` and tab that
    splits the header into the most known columns: Excel writes `;` where the decimal mark
    is a comma.
    """
    notes: list[str] = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", "replace")
        notes.append('read as UTF-16 (what Excel saves as "Unicode Text")')
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                raise DomainError(
                    f"not UTF-8 text, nor Windows-1252 (it looks like {_looks_like(data)}); "
                    + EXCEL_UTF8
                ) from None
            notes.append(
                "not UTF-8: read as Windows-1252 (cp1252), as Excel saves "
                '"CSV (Comma delimited)"; check the names, or ' + EXCEL_UTF8
            )
    delimiter = _delimiter(text.lstrip("\ufeff").split("\n", 1)[0], columns)
    if delimiter != ",":
        name = "tab" if delimiter == "\t" else f'"{delimiter}"'
        notes.append(f"columns are separated by {name}, not commas: read that way")
    return text.lstrip("\ufeff"), delimiter, notes


def _looks_like(data: bytes) -> str:
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:65536]).best()
    except Exception:  # noqa: BLE001 - only for the message
        best = None
    return best.encoding if best is not None else "binary data"


def _delimiter(header: str, columns: Sequence[str]) -> str:
    def known(sep: str) -> int:
        return sum(1 for c in header.split(sep) if c.strip().strip('"').lower() in columns)

    best = max((",", ";", "\t"), key=lambda sep: (known(sep), sep == ","))
    return best if known(best) else ","


# -- importing rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What an import does to one person: "added", "updated" or "unchanged"."""

    kind: str
    person: Person
    line: int


def import_rows(
    rows: Iterable[CsvRow],
    existing: Mapping[str, Person],
    offered: set[str],
    default_tz: str,
    update: bool,
) -> tuple[list[Change], list[str]]:
    """What importing `rows` into `existing` changes, and every problem as "LINE: message".

    A new address is added (its empty cells take the defaults: `default_tz`, no manager, no
    offers). A known one is refused unless `update`: then the columns the file has replace
    its values (an empty manager removes the manager, an empty time zone keeps the zone),
    the columns it lacks keep theirs, and a row that changes nothing is "unchanged".
    Managers may be anyone known or in the file; a loop is refused. Any problem means the
    caller imports nothing. `existing` is only looked up (never iterated: it may be the
    store's directory, read shard by shard); `offered` is every skill it offers.
    """
    problems: list[str] = []
    found: list[tuple[int, Person, Person | None]] = []
    bad_rows: dict[str, int] = {}
    offered = set(offered)
    for row in rows:
        f = row.fields
        try:
            addr = normalize_email(f.get("email", ""))
            current = existing.get(addr)
            if current is not None and not update:
                raise DomainError(f"{addr} already exists (pass --update to change known people)")
            person = _row_person(f, addr, current, default_tz)
            near_miss = offer_near_miss(person.offers, offered)
            if near_miss:
                raise DomainError(near_miss)
            offered.update(person.offers)
        except DomainError as exc:
            problems.append(f"{row.line}: {exc}")
            bad_rows[canonical(f.get("email", ""))] = row.line
            continue
        found.append((row.line, person, current))
    problems.extend(_directory_problems(found, existing, bad_rows))
    problems.sort(key=lambda text: int(text.split(":", 1)[0]))
    changes = [
        Change(
            "added" if current is None else "unchanged" if person == current else "updated",
            person,
            line,
        )
        for line, person, current in found
    ]
    return changes, problems


def _row_person(f: Mapping[str, str], addr: str, current: Person | None, tz: str) -> Person:
    """The person a row describes: new, or `current` with the row's columns applied."""
    if current is None:
        return make_person(
            addr,
            f.get("name", ""),
            f.get("department", ""),
            f.get("manager") or None,
            f.get("timezone") or None,
            split_offers(f.get("offers", "")),
            tz,
        )
    updated = make_person(
        addr,
        f.get("name", current.name),
        f.get("department", current.department),
        (f["manager"] or None) if "manager" in f else current.manager,
        (f.get("timezone") or "").strip() or current.timezone,
        split_offers(f["offers"]) if "offers" in f else current.offers,
        current.timezone,
    )
    return replace(updated, bouncing=current.bouncing, bounce_reason=current.bounce_reason)


def _directory_problems(
    found: list[tuple[int, Person, Person | None]],
    existing: Mapping[str, Person],
    bad_rows: Mapping[str, int],
) -> list[str]:
    """Rows twice in the file, managers nobody knows, manager loops: as "LINE: message"."""
    problems: list[str] = []
    seen: set[str] = set()
    for line, person, _ in found:
        if person.email in seen:
            problems.append(f"{line}: {person.email} appears twice in the file")
        seen.add(person.email)
    everyone = ChainMap({person.email: person for _, person, _ in found}, existing)
    for line, person, _ in found:
        if person.manager and person.manager not in everyone:
            if person.manager in bad_rows:
                # The manager is in the file, on a row that is wrong: say that instead.
                problems.append(
                    f"{line}: manager {person.manager} is on bad line {bad_rows[person.manager]}"
                )
            else:
                problems.append(f"{line}: manager {person.manager} does not exist")
        elif person.manager and _in_cycle(person.email, everyone):
            problems.append(f"{line}: manager chain of {person.email} loops back to itself")
    return problems


def offer_near_miss(offers: Iterable[str], offered: set[str]) -> str | None:
    """The error for the first of `offers` that nobody offers yet while a spelling of it
    that differs only in case, spacing or punctuation is offered (`public-speaking` next to
    `public speaking`): two spellings would split the directory. None when there is none."""
    for skill in offers:
        guess = None if skill in offered else hints.skill(skill, offered)
        if guess:
            return f'offers: nobody offers "{skill}" yet{hints.did_you_mean(guess)}'
    return None


def offer_hint(skill: str, people: Iterable[Person]) -> str:
    """` (did you mean "X"?)` when nobody offers `skill` but someone offers a spelling of it
    that differs only in case, spacing or punctuation; "" otherwise."""
    offered = {s for person in people for s in person.offers}
    if skill in offered:
        return ""
    return hints.did_you_mean(hints.skill(skill, offered))


def removal_problems(
    email: str,
    people: Mapping[str, Person],
    partnerships: Iterable[Partnership],
    end: bool,
    reports: Iterable[str],
) -> list[str]:
    """Why `email` cannot be removed from the directory now (empty: it can).

    Not while they are in a partnership that runs (unless `end`: then those are ended
    first), and not while they are someone's manager (reporting lines decide who may
    partner whom: set the new manager first).
    """
    problems: list[str] = []
    if email not in people:
        return [f"no such person {email}"]
    running = sorted(
        p.id for p in partnerships if p.status != ENDED and email in (p.member, p.partner)
    )
    if running and not end:
        ids = ", ".join(str(pid) for pid in running)
        problems.append(
            f"{email} is in running partnership(s) {ids}: end them first, or pass "
            "--end-partnerships to end them with the removal"
        )
    names = sorted(reports)  # who names `email` as their manager
    if names:
        problems.append(
            f"{email} is the manager of {', '.join(names)}: give them their new manager "
            "first (people update EMAIL --manager NEW, or people import --update)"
        )
    return problems
