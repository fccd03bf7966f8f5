"""Real mail through `mailflow reply parse --json`: the shared bug reports and real clients.

Two sets, one checker (the rules of ../shared/cases/real-mail/score.py: kind, setback, strings
the new text must / must not contain; our own fixtures add ``sections_contain``):

* ``../shared/cases/real-mail/`` -- replies that reproduce reported problems (issue 10).
  Skipped when shared/ is not next to the repository.
* ``tests/fixtures/clients/`` -- replies composed by mutt and s-nail themselves to a check-in
  mailflow sent (``scripts/make_client_fixtures.py`` regenerates them; these tests only read
  the committed files, so no mail client is needed here).

Every case runs the real command line in-process and reads its JSON, so the contract's shape
(design.md section 5) is checked along with the content.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from mailflow.cli import main
from mailflow.parse import parse_message

SHARED_CASES = Path(__file__).resolve().parents[2] / "shared" / "cases" / "real-mail"
CLIENTS = Path(__file__).parent / "fixtures" / "clients"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_client_fixtures.py"


def load_expected(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "expected.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def cli_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What `mailflow reply parse PATH --json` prints, as a dict (exactly one JSON object)."""
    capsys.readouterr()
    code = main(["reply", "parse", str(path), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    got = json.loads(out)
    assert list(got) == ["kind", "text", "setback", "sections"]
    assert list(got["sections"]) == ["done", "setback", "next"]
    return got


def problems(got: dict[str, Any], exp: dict[str, Any]) -> list[str]:
    """Differences from an expectation (score.py's rules, plus optional sections_contain)."""
    found = []
    if got["kind"] != exp["kind"]:
        found.append(f"kind {got['kind']!r}, expected {exp['kind']!r}")
    if got["setback"] != exp["setback"]:
        found.append(f"setback {got['setback']!r}, expected {exp['setback']!r}")
    text = got["text"] or ""
    found += [f"text lacks {s!r}" for s in exp.get("text_contains", []) if s not in text]
    found += [f"text contains {s!r}" for s in exp.get("text_excludes", []) if s in text]
    for key, want in exp.get("sections_contain", {}).items():
        have = got["sections"][key]
        if (want and want not in have) or (not want and have):
            found.append(f"sections[{key!r}] is {have!r}, expected it to hold {want!r}")
    return found


# --- the shared bug reports ------------------------------------------------------------------

SHARED = load_expected(SHARED_CASES)


@pytest.mark.parametrize("name", sorted(SHARED) or ["(shared cases absent)"])
def test_shared_real_mail_case(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    if not SHARED:
        pytest.skip(f"shared real-mail cases not present at {SHARED_CASES}")
    got = cli_json(SHARED_CASES / name, capsys)
    assert problems(got, SHARED[name]) == [], got


# --- replies made by real clients ------------------------------------------------------------

CLIENT_CASES = load_expected(CLIENTS)
# Each client's own marks, as it wrote them: User-Agent and attribution line.
CLIENT_MARKS = {
    "mutt_": (
        r"^User-Agent: Mutt/\d",
        r"^On \w{3}, \w{3} \d\d, \d{4} at \d\d:\d\d:\d\d[AP]M [+-]\d{4}, mailflow wrote:$",
    ),
    "snail_": (r"^User-Agent: s-nail v\d", r"^mailflow <mailflow@checkin\.example\.com> wrote:$"),
}


def test_client_fixtures_are_all_expected() -> None:
    files = {p.name for p in CLIENTS.glob("*_*.eml")}
    assert files == set(CLIENT_CASES)
    styles = {n.removesuffix(".eml").split("_")[-1] for n in files}
    assert styles == {"top", "bottom", "interleaved"}
    assert {n.split("_")[0] for n in files} == {"mutt", "snail"}


@pytest.mark.parametrize("name", sorted(CLIENT_CASES))
def test_client_reply(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    got = cli_json(CLIENTS / name, capsys)
    assert problems(got, CLIENT_CASES[name]) == [], got


@pytest.mark.parametrize("name", sorted(CLIENT_CASES))
def test_client_fixture_is_the_clients_own_output(name: str) -> None:
    """Guard against hand edits: the client's User-Agent, attribution and quoting are there,
    and the quoted check-in is mailflow's (its marker and reply address)."""
    raw = (CLIENTS / name).read_bytes()
    msg = raw.decode("utf-8", "replace")
    agent, attribution = next(v for k, v in CLIENT_MARKS.items() if name.startswith(k))
    assert re.search(agent, msg, re.M), name
    assert re.search(attribution, msg, re.M), name
    quote = "\t" if "tabquote" in name else "> "
    assert f"{quote}--- reply above this line ---" in msg
    parsed = parse_message(raw)
    assert parsed.in_reply_to is not None and parsed.in_reply_to.startswith("<checkin.c1-")


def test_the_checkin_the_clients_answered_is_not_a_report() -> None:
    """The check-in itself (mailflow's own mail, Auto-Submitted) never reads as a report."""
    parsed = parse_message((CLIENTS / "checkin.eml").read_bytes())
    assert parsed.kind == "auto_reply"
    assert parsed.setback is None


# --- the fixture script's editor role (the part that needs no client) ---------------------


@pytest.fixture(scope="module")
def script() -> Any:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import make_client_fixtures as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


DRAFT = (
    "On Mon, Nov 30, 2026 at 08:00:00AM +0000, mailflow wrote:\n"
    "> --- reply above this line ---\n"
    "> Done: what you did this week\n"
    '> Setback: anything that didn\'t go to plan (or "none")\n'
    "> Next: what you'll do next week\n"
    "\n-- \nPriya\n"
)


@pytest.mark.parametrize(
    ("name", "first_line", "text_after"),
    [
        ("mutt_top", "Done: finished module 4", None),
        ("mutt_bottom", "On Mon", "> Next: what you'll do next week"),
        ("mutt_interleaved", "On Mon", "> Done: what you did this week"),
    ],
)
def test_editor_role_writes_where_the_member_would(
    script: Any, tmp_path: Path, name: str, first_line: str, text_after: str | None
) -> None:
    draft = tmp_path / "draft"
    draft.write_text(DRAFT, encoding="utf-8")
    script.edit(name, draft)
    lines = draft.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith(first_line)
    assert lines[-3:] == ["-- ", "Priya", ""]  # the client's signature stays where it was
    if text_after is not None:
        at = lines.index(text_after)
        assert lines[at + 1] == "" and not lines[at + 2].startswith(">")


def test_editor_role_keeps_the_header_section(script: Any, tmp_path: Path) -> None:
    """With editheaders (Debian's s-nail.rc) the draft starts with headers and comments."""
    draft = tmp_path / "draft"
    draft.write_text("# comment\nTo: x@example.com\nSubject: Re: y\n\n" + DRAFT, encoding="utf-8")
    script.edit("snail_top", draft)
    text = draft.read_text(encoding="utf-8")
    assert text.startswith("# comment\nTo: x@example.com\nSubject: Re: y\n\nDone: ")
