"""The eight fault kinds of issue 10, each with our own cases beyond the shared ones.

``tests/fixtures/kinds/`` holds whole messages (named ``kN_...`` after the kind they test) with
their expectations in ``expected.json``, in the shared real-mail format (kind, setback,
text_contains, text_excludes) plus ``sections_contain``; they go through the real command
line. Like ``tests/fixtures/clients/``, they answer ``tests/fixtures/clients/checkin.eml``
(partnership 1, 2026-W49, From the member priya@fernhill.example, token signed with the
fixture script's MAILFLOW_SECRET), so they can be replayed through the listener as they are.
The functions below pin each kind's rules on smaller inputs:

1. our reply marker inside the quote does not cut the reply; answers under quoted questions
2. forwards are content
3. out-of-office by subject prefix only
4. phone and app footers in many languages, links inside them
5. signature delimiters as clients write them
6. charset labels that lie
7. typographic punctuation matches like ASCII
8. nothing the member wrote is lost; the setback flag agrees with the sections
"""

from __future__ import annotations

import re
from datetime import date
from email.header import Header
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_real_mail import cli_json, load_expected, problems

from mailflow.commands import (
    ACCEPT,
    DECLINE,
    GOAL_DONE,
    PAUSE_UNTIL,
    extract_commands,
    parse_consent,
)
from mailflow.parse import (
    REPLY_MARKER,
    _clause_admits_any,
    _decode_bytes,
    _is_no_value,
    detect_setback,
    extract_reply_text,
    find_sections,
    fold_typography,
    free_text,
    parse_message,
)

KINDS = Path(__file__).parent / "fixtures" / "kinds"
CASES = load_expected(KINDS)


def test_every_kind_has_fixtures() -> None:
    assert {p.name for p in KINDS.glob("*.eml")} == set(CASES)
    assert {name[:2] for name in CASES} == {f"k{n}" for n in range(1, 9)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kind_fixture(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    got = cli_json(KINDS / name, capsys)
    assert problems(got, CASES[name]) == [], got


def message(body: str, subject: str = "Re: Your check-in", **headers: str) -> bytes:
    head = {"From": "Ana <ana@example.com>", "To": "checkin+x@checkin.example.com"}
    head |= {"Subject": subject, "Content-Type": 'text/plain; charset="utf-8"'}
    head |= {k.replace("_", "-"): v for k, v in headers.items()}
    lines = [f"{k}: {v if v.isascii() else Header(v, 'utf-8').encode()}" for k, v in head.items()]
    return ("\n".join(lines) + "\n\n").encode("ascii") + body.encode("utf-8")


QUOTE = (
    f"> {REPLY_MARKER}\n> Hi Ana,\n>\n> Reply like this:\n>\n> Done: what you did this week\n"
    "> Setback: anything that didn't go to plan (or \"none\")\n> Next: what you'll do next week\n"
    ">\n> Your goals:\n>   1. Run 5k.\n"
)


# --- 1. the reply marker inside the quote ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text"),
    [
        # bottom-posted (mutt, s-nail, Thunderbird "reply below")
        (f"On Mon, Ana's check-in wrote:\n{QUOTE}\nRan 5k twice.\n", "Ran 5k twice."),
        # top-posted still works
        (f"Ran 5k twice.\n\nOn Mon, Mailflow wrote:\n{QUOTE}", "Ran 5k twice."),
        # above and below
        (f"Ran 5k.\n\nOn Mon, Mailflow wrote:\n{QUOTE}\nAnd a PS.\n", "Ran 5k.\n\nAnd a PS."),
        # the marker without a quote: an unquoted copy of the check-in, cut there
        (f"Ran 5k.\n\n{REPLY_MARKER}\nHi Ana,\nDone: what you did\n", "Ran 5k."),
        # an autocorrected marker ("---" became an em dash) is still the marker
        ("Ran 5k.\n\n— reply above this line —\nHi Ana,\n", "Ran 5k."),
        # only a quote and a signature under it: nothing was written
        (f"On Mon, Mailflow wrote:\n{QUOTE}\n-- \nAna\n", ""),
    ],
)
def test_text_around_the_quoted_marker_is_the_reply(body: str, text: str) -> None:
    assert extract_reply_text(body) == text


def test_tab_indented_quote_is_a_quote() -> None:
    """s-nail's own default quote prefix is a tab (Debian's s-nail.rc makes it "> ")."""
    quoted = "\n".join(
        "\t" + line[2:] if line.startswith("> ") else "\t" for line in QUOTE[:-1].split("\n")
    )
    body = f"mailflow <c@x.example> wrote:\n\n{quoted}\n\nDone: ran 5k\nSetback: none\n"
    assert extract_reply_text(body) == "Done: ran 5k\nSetback: none"


def test_answers_under_quoted_questions_fill_the_sections() -> None:
    body = (
        "On Mon, Mailflow wrote:\n> Done: what you did this week\n\nRan 5k twice.\n\n"
        '> Setback: anything that didn\'t go to plan (or "none")\n'
        "> (or say none)\n\nI skipped Friday.\n\n"
        "> Next: what you'll do next week\n>\n\n10k on Sunday.\n\n> Your goals:\n>   1. Run\n"
    )
    parsed = parse_message(message(body))
    assert parsed.sections == {
        "done": "Ran 5k twice.",
        "setback": "I skipped Friday.",
        "next": "10k on Sunday.",
    }
    assert parsed.setback is True
    for quoted in ("what you did", "didn't go to plan", "Your goals"):
        assert quoted not in parsed.text


def test_a_command_under_a_quoted_question_stays_a_command() -> None:
    body = (
        "> Done: what you did this week\n\nRan twice.\n\n"
        "> Next: what you'll do next week\n\npause 2 weeks\nThen 10k.\n"
    )
    text = extract_reply_text(body)
    assert text == "Done: Ran twice.\n\npause 2 weeks\nNext: Then 10k."
    got = extract_commands(text, date(2026, 11, 30))
    assert [c.kind for c in got.commands] == [PAUSE_UNTIL]
    assert find_sections(got.text) == {"done": "Ran twice.", "setback": "", "next": "Then 10k."}


def test_an_answer_with_its_own_label_keeps_it() -> None:
    body = "> Done: what you did this week\n\nSetback: the rain\n"
    assert find_sections(extract_reply_text(body))["setback"] == "the rain"


def test_text_under_a_non_question_quote_gets_no_label() -> None:
    body = "> Your goals:\n>   1. Run 5k.\n\nOn track for both.\n"
    text = extract_reply_text(body)
    assert text == "On track for both."
    assert find_sections(text) == {"done": "", "setback": "", "next": ""}


@pytest.mark.parametrize(
    "html",
    [
        b'<blockquote type="cite">q</blockquote>' + b"<div> </div>" * 20_000 + b"answer",
        b'<blockquote type="cite">' * 2000 + b"q" + b"</blockquote>" * 2000 + b"answer",
        b'<blockquote type="cite">q</blockquote>answer' * 10_000,
    ],
)
@pytest.mark.timeout(60)  # a hang guard (quadratic work took minutes), not a speed assertion
def test_keeping_html_quotes_stays_bounded(html: bytes) -> None:
    parsed = parse_message(b"Subject: x\nContent-Type: text/html\n\n" + html)
    assert "answer" in parsed.text


# --- 2. forwards -----------------------------------------------------------------------------

FORWARDED = (
    "Here it is.\n\n________________________________\n"
    "From: Ana <ana@example.com>\nSent: Friday, November 27, 2026 5:40 PM\n"
    "To: Bob <bob@example.com>\nSubject: running\n\nDone: ran 5k\nSetback: missed Sunday\n"
)


@pytest.mark.parametrize(
    "subject",
    ["FW: running", "Fwd: running", "WG: running", "TR: running", "RV: running", "ENC: running",
     "Doorst: running", "VB: running", "PD: running", "I: running", "Re: Fwd: running",
     "[Fwd: running]", "转发: running", "転送: running"],
)  # fmt: skip
def test_forward_subjects_keep_the_forwarded_report(subject: str) -> None:
    parsed = parse_message(message(FORWARDED, subject=subject))
    assert parsed.text == "Here it is.\n\nDone: ran 5k\nSetback: missed Sunday"
    assert parsed.setback is True


def test_a_reply_with_the_same_block_is_still_history() -> None:
    parsed = parse_message(message(FORWARDED, subject="RE: running"))
    assert parsed.text == "Here it is."


# --- 3. out of office by subject prefix -------------------------------------------------------

OOO_SUBJECTS = [
    "Automatic reply: Your check-in", "Automated Response: Your check-in",
    "Auto: Ana is out of the office", "Away: Your check-in", "Out of the office",
    "Out of Office until 7 December", "[Auto-Reply] Your check-in", "Autosvar: Your check-in",
    "Automatisk svar: Your check-in", "Automatiskt svar: Your check-in",
    "Automaattinen vastaus: Your check-in", "Automatyczna odpowiedź: Your check-in",
    "Automatisch antwoord: Your check-in", "Resposta automática: Your check-in",
    "Răspuns automat: Your check-in", "Automatická odpověď: Your check-in",
    "Αυτόματη απάντηση: Your check-in", "Otomatik yanıt: Your check-in",
    "自動応答: Your check-in", "自动回复: Your check-in", "自動回覆: Your check-in",
    "자동 회신: Your check-in", "תשובה אוטומטית: Your check-in", "رد تلقائي: Your check-in",
    "Abwesenheitsnotiz: Your check-in", "Réponse automatique : Your check-in",
    "[EXTERNAL] Automatic reply: Your check-in", "*EXTERNAL* Out of Office: Your check-in",
]  # fmt: skip
REAL_SUBJECTS = [
    "Re: Your absence management check-in for week 48",
    "Re: Your vacation rental pricing check-in for week 48",
    "Holiday planning: my week", "Re: Out of office etiquette check-in",
    "Automation check-in, week 48", "Re: Your auto-reply design check-in",
    "Away-day planning", "Absence management week 48",
    "[EXTERNAL] Re: Your absence management check-in",
]  # fmt: skip


@pytest.mark.parametrize("subject", OOO_SUBJECTS)
def test_out_of_office_subject_prefixes(subject: str) -> None:
    raw = message("I am away until Monday.", subject=Header(subject, "utf-8").encode())
    parsed = parse_message(raw)
    assert (parsed.kind, parsed.detail, parsed.setback) == ("auto_reply", "ooo subject", None)


@pytest.mark.parametrize("subject", REAL_SUBJECTS)
def test_the_same_words_later_in_a_subject_are_a_reply(subject: str) -> None:
    parsed = parse_message(message("Done: x\nSetback: I missed Friday", subject=subject))
    assert (parsed.kind, parsed.setback) == ("reply", True)


# --- 4. phone and app footers ---------------------------------------------------------------

FOOTERS = [
    "Sent from Mail<https://go.microsoft.com/fwlink/?LinkId=550986> for Windows",
    "Sent from Mail for Windows 10",
    "Get Outlook for Android<https://aka.ms/ghei36>",
    "Get Outlook for iOS<https://aka.ms/o0ukef>",
    "Outlook für Android herunterladen<https://aka.ms/ghei36>",
    "Outlook für iOS herunterladen",
    "Gesendet von Mail<https://go.microsoft.com/fwlink/?LinkId=550986> für Windows",
    "Télécharger Outlook pour Android<https://aka.ms/ghei36>",
    "Obtenir Outlook pour iOS",
    "Envoyé à partir de Courrier<https://go.microsoft.com/fwlink/?LinkId=550986> pour Windows",
    "Obtener Outlook para Android<https://aka.ms/ghei36>",
    "Enviado desde Correo<https://go.microsoft.com/fwlink/?LinkId=550986> para Windows",
    "Scarica Outlook per Android",
    "Inviato da Posta<https://go.microsoft.com/fwlink/?LinkId=550986> per Windows",
    "Obter o Outlook para Android",
    "Outlook voor Android downloaden",
    "Hent Outlook til Android",
    "Skaffa Outlook för iOS",
    "Pobierz Outlook dla systemu Android",
    "Получить Outlook для Android",
    "Sent from Yahoo Mail<https://mail.onelink.me/107872968?pid=nativeplacement> on Android",
    "Sent from Yahoo Mail for iPhone<https://overview.mail.yahoo.com/?.src=iOS>",
    "Sent\u00a0from\u00a0my\u00a0iPhone",
    "Von meinem iPhone gesendet",
    "Android 版 Outlook を入手<https://aka.ms/ghei36>",
    "获取 Android 版 Outlook<https://aka.ms/ghei36>",
    "iOS용 Outlook 받기",
    "Get [Outlook for Android](https://aka.ms/ghei36)",
    "Von Outlook für Android gesendet",
    "Sent from Outlook<http://aka.ms/weboutlook>",
]


@pytest.mark.parametrize("footer", FOOTERS)
def test_footers_never_reach_text_or_sections(footer: str) -> None:
    parsed = parse_message(message(f"Done: read 40 pages\nNext: 40 more\n\n{footer}\n"))
    assert parsed.text == "Done: read 40 pages\nNext: 40 more"
    assert parsed.sections["next"] == "40 more"


@pytest.mark.parametrize(
    "line",
    [
        "Next: set up Outlook on my Android phone",
        "I finally installed Outlook for Android, and it was fine.",
        "Sent from my desk, which is much easier than my phone.",
    ],
)
def test_sentences_that_mention_apps_are_kept(line: str) -> None:
    assert extract_reply_text(f"Done: read\n\n{line}\n") == f"Done: read\n\n{line}"


# --- 5. signature delimiters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "delimiter", ["-- ", "--", "\\--", "\\-- ", "\\-\\-", "—", "--\u00a0", "-- Ana Member"]
)
def test_signature_delimiters(delimiter: str) -> None:
    body = f"Done: ran\nSetback: none\n\n{delimiter}\nAna Member\n+1 555 0100\n"
    assert extract_reply_text(body) == "Done: ran\nSetback: none"


def test_delimiter_right_under_a_quote() -> None:
    body = f"On Mon, Mailflow wrote:\n> Next: what you'll do\n\nRun 10k.\n\n{QUOTE}-- \nAna\n"
    assert extract_reply_text(body) == "Next: Run 10k."


# --- 6. charset labels that lie ---------------------------------------------------------------

ZURICH = "Zürich – café"


@pytest.mark.parametrize(
    ("data", "label", "text"),
    [
        (ZURICH.encode("utf-8"), "windows-1252", ZURICH),
        (ZURICH.encode("utf-8"), "iso-8859-1", ZURICH),
        (ZURICH.encode("utf-8"), "ISO-8859-15", ZURICH),
        (ZURICH.encode("utf-8"), "us-ascii", ZURICH),
        ("Zürich café".encode("latin-1"), "utf-8", "Zürich café"),
        ("Zürich café".encode("latin-1"), None, "Zürich café"),
        ("Zürich café".encode("latin-1"), "x-unknown", "Zürich café"),
        ("naïve – ok".encode("cp1252"), "utf-8", "naïve – ok"),
        ("Zürich ".encode() + "café".encode("latin-1"), "utf-8", "Zürich café"),
        # genuine single-byte text under its own label is left alone
        ("Zürich café".encode("latin-1"), "iso-8859-1", "Zürich café"),
        ("Сделано: прочитал".encode("koi8-r"), "koi8-r", "Сделано: прочитал"),
        ("Сделано: прочитал книгу".encode("cp1251"), None, "Сделано: прочитал книгу"),
        (b"\x81 control", "iso-8859-1", "\x81 control"),
    ],
)
def test_decoding_when_labels_lie(data: bytes, label: str | None, text: str) -> None:
    assert _decode_bytes(data, label) == text


def test_undecodable_bytes_are_never_replaced_when_a_guess_exists() -> None:
    raw = message("", Content_Type='text/plain; charset="utf-8"')
    raw += "Setback: I missed the Zürich rehearsal\n".encode("latin-1")
    parsed = parse_message(raw)
    assert parsed.sections["setback"] == "I missed the Zürich rehearsal"
    assert "\ufffd" not in parsed.text


def test_raw_8bit_header_is_decoded_like_a_body() -> None:
    raw = b"From: Ana <ana@example.com>\nSubject: Re: Z\xc3\xbcrich check-in\n\nDone: x\n"
    assert parse_message(raw).subject == "Re: Zürich check-in"


# --- 7. typographic punctuation ---------------------------------------------------------------


def test_fold_keeps_positions() -> None:
    text = "didn’t – “x” … a\u00a0b"
    assert fold_typography(text) == 'didn\'t - "x" . a b'
    assert len(fold_typography(text)) == len(text)


@pytest.mark.parametrize(
    ("text", "setback"),
    [
        ("I didn’t get to the exercises.", True),
        ("Couldn’t finish the module…", True),
        ("I didn’t miss a single session.", False),
        ("Nothing slipped – all good.", False),
        ("No\u00a0setbacks this week.", False),
        ("Setback\u00a0: none…", False),
        ("Setback: “none”", False),
        ("Setback: —", False),
        ("Setback: –", False),
        ("Rückschläge\u202f: keine", False),
        ("I fell\u00a0behind on the reading.", True),
    ],
)
def test_typographic_punctuation_in_setback_phrases(text: str, setback: bool) -> None:
    assert detect_setback(text, find_sections(text)) is setback


def test_typographic_labels() -> None:
    text = "What I’ve done: read\nWhat’s next\u00a0: more"
    assert find_sections(text) == {"done": "read", "setback": "", "next": "more"}


@pytest.mark.parametrize(
    ("answer", "consent"),
    [("D’accord, avec plaisir", ACCEPT), ("Yes – happy to", ACCEPT), ("No… too busy", DECLINE)],
)
def test_typographic_consent_answers(answer: str, consent: str) -> None:
    assert parse_consent(answer) == consent


def test_typographic_commands() -> None:
    today = date(2026, 11, 30)
    got = extract_commands(
        "pause until 2026\u201112\u201120\ngoal\u00a02\u00a0done\nDone: x", today
    )
    assert [c.kind for c in got.commands] == [PAUSE_UNTIL, GOAL_DONE]
    assert got.commands[0].until == date(2026, 12, 20)
    assert got.text == "Done: x"


# --- 8. nothing is lost; the setback flag agrees with the sections ------------------------------


def test_free_text_and_some_labels_all_survive() -> None:
    text = "Rough week, the flu got me.\nI fell behind.\n\nNext week: catch up"
    parsed = parse_message(message(text))
    assert parsed.text == text
    assert parsed.sections == {"done": "", "setback": "", "next": "catch up"}
    assert free_text(parsed.text) == "Rough week, the flu got me.\nI fell behind."
    assert parsed.setback is True  # admitted in the free text


@pytest.mark.parametrize(
    ("section", "setback"),
    [
        ("none\n\nActually I missed Thursday.", True),
        ("None so far. Actually I missed Tuesday.", True),
        ("none, but I skipped the run", True),
        ("none\n\nGreat week overall, thanks for the push.", False),
        ("none, didn't miss a day", False),
        ("the rain", True),
    ],
)
def test_setback_section_decides(section: str, setback: bool) -> None:
    text = f"Done: x\nSetback: {section}"
    assert detect_setback(text, find_sections(text)) is setback


LINES = st.sampled_from(
    [
        "Done: ran 5k", "Setback: none", "Setback: I missed Friday", "Setback: n/a",
        "Setbacks:", "Next: 10k", "Next week: rest", "I fell behind on the reading.",
        "No setbacks this week.", "Great week!", "I didn’t miss a day.", "", "- item",
        "Setback: none\u2026", "Problems: the app crashed", "Blockers: —",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=8))
def test_setback_flag_is_consistent_with_what_was_written(lines: list[str]) -> None:
    """setback=true never comes from nothing; a real Setback section is never a no."""
    text = "\n".join(lines)
    parsed = parse_message(message(text + "\n"))
    value = parsed.sections["setback"]
    if value.strip() and not _is_no_value(value):
        assert parsed.setback is True
    if value.strip() and _is_no_value(value):
        assert parsed.setback is False
    if parsed.setback:
        assert (value.strip() and not _is_no_value(value)) or _clause_admits_any(
            fold_typography(parsed.text)
        )
    # Nothing lost: every written line is in the text, and every line of the text is in the
    # free text or under a label.
    kept = free_text(parsed.text) + "\n" + "\n".join(parsed.sections.values())
    for line in parsed.text.split("\n"):
        body = re.sub(r"^[^:]{1,30}:\s*", "", line).strip()
        assert body in kept
