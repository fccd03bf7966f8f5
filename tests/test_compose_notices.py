"""Tests for the notice templates of issue 6: intro, checkin_ack, receipt, pause_notice,
partner_note, summary, consent_notice, and the week-by-week strip in digest and no_report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from clitools import Mailflow

from mailflow.compose import TEMPLATE_NAMES, Rendered, TemplateError, Templates
from mailflow.samples import sample_context, sample_letter, sample_variants

NEW_NAMES = (
    "intro",
    "checkin_ack",
    "receipt",
    "pause_notice",
    "partner_note",
    "summary",
    "consent_notice",
)
COMMANDS = ("pause until YYYY-MM-DD", "pause N weeks", "resume", "goal N done", "stop")
COLOURS = {  # cell backgrounds; the borders carry the stronger tone of each
    "reported": "#d1fae5",
    "setback": "#fef3c7",
    "missed": "#fee2e2",
    "paused": "#f3f4f6",
}
# Each cell's mark: the strip reads without colour (issue 10).
MARKS = {"reported": "✓", "setback": "!", "missed": "✗", "paused": "–", "pending": "?"}


@pytest.fixture(scope="module")
def shipped() -> Templates:
    return Templates()


def _render(shipped: Templates, name: str, variant: str | None = None, **changes) -> Rendered:
    ctx = sample_context(name, variant=variant)
    ctx.update(changes)
    return shipped.render(name, ctx)


def _cells(html: str) -> list[tuple[str, str, str]]:
    """(label, state, background colour) of every strip cell, in order."""
    return re.findall(r'<td title="([^"]+): (\w+)" style="[^"]*?background:(#[0-9a-f]{6})', html)


def _marks(html: str) -> list[tuple[str, str]]:
    """(state, the mark written in the cell) of every strip cell, in order."""
    return re.findall(r'<td title="[^"]+: (\w+)" style="[^"]*">([^<]*)</td>', html)


# ------------------------------------------------------------------------------------------
# Every new template in every variant


def test_new_names_are_registered_with_variants() -> None:
    for name in NEW_NAMES:
        assert name in TEMPLATE_NAMES
        assert sample_variants(name), name


@pytest.mark.parametrize(
    ("name", "variant"), [(name, v) for name in NEW_NAMES for v in sample_variants(name)]
)
def test_every_variant_renders_cleanly(shipped: Templates, name: str, variant: str) -> None:
    rendered = _render(shipped, name, variant)
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert "</html>" in rendered.html
    for line in rendered.text.splitlines():
        assert len(line) <= 72, line
    assert "mailflow" in rendered.html and "mailflow" in rendered.text
    assert "{{" not in rendered.text + rendered.html  # nothing left unrendered


def test_unknown_variant_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="valid variants: member, member accepted"):
        sample_context("intro", variant="admin")
    with pytest.raises(TemplateError, match="valid variants: none"):
        sample_context("checkin", variant="x")


def test_preview_takes_a_variant(shipped: Templates) -> None:
    assert shipped.preview("intro").subject.startswith("Your public speaking partnership")
    partner = shipped.preview("intro", variant="partner")
    assert partner.subject == "Will you be Zoë Adler's public speaking partner?"


def test_samples_are_what_the_builders_make() -> None:
    # No hand-kept mirror: a sample is the letter its builder makes for the sample program
    # (tests/test_letters.py holds every builder to the context keys mail has always had).
    for name in TEMPLATE_NAMES:
        letter = sample_letter(name, variant=(sample_variants(name) or ("",))[0])
        assert letter.template == name
        assert dict(letter.ctx) == sample_context(name)


# ------------------------------------------------------------------------------------------
# intro


def test_intro_partner_not_accepted_asks_yes_or_no(shipped: Templates) -> None:
    rendered = _render(shipped, "intro", "partner")
    text, html = rendered.text, rendered.html
    assert text.startswith("--- reply above this line ---\nHi Bruno Keller,")
    assert 'Reply "yes" to accept or "no" to decline.' in text
    assert "Check-ins start only" in text and "after you accept." in text
    assert "Reply <strong>yes</strong> to accept or <strong>no</strong> to decline." in html
    assert "Zoë Adler's goals:" in text
    assert "due 2026-12-18 (46 days left)" in text
    assert "I want to present my own team's work" in text  # the why
    assert "One missed week is not a pattern." in text  # the saddle text
    assert "What you tell Zoë Adler when a week goes wrong:" in text
    assert "Every Monday at 09:00 (Europe/Berlin)" in text
    assert "pause until" not in text  # the member's commands are not the partner's business


def test_intro_partner_accepted_does_not_ask(shipped: Templates) -> None:
    rendered = _render(shipped, "intro", "partner accepted")
    assert rendered.subject == "You are Zoë Adler's public speaking partner"
    assert "yes" not in rendered.text.lower().split()
    assert "decline" not in rendered.text + rendered.html
    assert "Thank you!" in rendered.text


def test_member_intro_lists_commands_and_next_steps(shipped: Templates) -> None:
    rendered = _render(shipped, "intro", "member")
    text, html = rendered.text, rendered.html
    assert rendered.subject == "Your public speaking partnership with Bruno Keller"
    for command in COMMANDS:
        assert re.search(rf"^  {re.escape(command)}\s", text, re.M), command
        assert f">{command}</code>" in html
    assert "put one on a line of its own in any reply" in text
    assert "reply any time, also to this mail, to report early" in text
    assert "we have asked Bruno Keller to accept" in text
    assert "What Bruno Keller will tell you when a week goes wrong:" in text
    assert "One missed week is not a pattern." in html
    accepted = _render(shipped, "intro", "member accepted").text
    assert "your first check-in arrives on\nMonday 9 November, 09:00 (Europe/Berlin)." in accepted
    assert "asked Bruno Keller to accept" not in accepted


def test_intro_escapes_user_text_in_html(shipped: Templates) -> None:
    ctx = sample_context("intro", variant="partner")
    ctx["partnership"]["saddle"] = "<b>You can</b> & will"
    rendered = shipped.render("intro", ctx)
    assert "&lt;b&gt;You can&lt;/b&gt; &amp; will" in rendered.html
    assert "<b>You can</b> & will" in rendered.text


# ------------------------------------------------------------------------------------------
# checkin_ack


def test_checkin_ack_says_got_it_and_shows_the_report(shipped: Templates) -> None:
    ctx = sample_context("checkin_ack")
    rendered = shipped.render("checkin_ack", ctx)
    text = rendered.text
    assert text.splitlines()[0] == ctx["reply_marker"]
    assert "Got it — we already have your public speaking report for this" in text
    assert "Anything to add? Just reply." in text
    assert ctx["checkin_at"] in text
    assert "Your report, received Sunday 22 November, 19:58" in text
    assert "Practised the talk twice" in text
    assert rendered.subject == "Got it: your public speaking report for week 48 of 2026"
    assert "<strong>Got it</strong> — we already have your" in rendered.html
    assert ctx["reply_marker"] in rendered.html


def test_checkin_ack_with_two_reports_numbers_them(shipped: Templates) -> None:
    text = _render(shipped, "checkin_ack", "updated").text
    assert "Report 1 of 2" in text and "Report 2 of 2" in text
    assert "I booked the team meeting slot" in text


def test_checkin_ack_escapes_report_in_html(shipped: Templates) -> None:
    rendered = _render(shipped, "checkin_ack", "setback")
    assert "stayed late &lt;again&gt;." in rendered.html
    assert "stayed late\n  <again>." in rendered.text


# ------------------------------------------------------------------------------------------
# receipt


def test_receipt_all_done(shipped: Templates) -> None:
    rendered = _render(shipped, "receipt", "done")
    assert rendered.subject == "Done: Paused until 2026-12-14; Goal 2 marked achieved"
    assert "  - Paused until 2026-12-14\n  - Goal 2 marked achieved" in rendered.text
    assert "stored as your report for week 48 of 2026" in rendered.text
    assert "Not done" not in rendered.text
    assert '<li style="margin:0 0 4px;color:#065f46;">Goal 2 marked achieved</li>' in (
        rendered.html
    )


def test_receipt_lists_problems_and_shows_the_right_form(shipped: Templates) -> None:
    rendered = _render(shipped, "receipt", "problems")
    text = rendered.text
    assert rendered.subject == "Not all of your reply was understood"
    assert "Not done, please check:" in text
    assert '  - Not understood: "pause til friday" — write "pause until\n' in text
    assert '    YYYY-MM-DD" or "pause N weeks"' in text  # dates are never split
    assert 'Not understood: "goal 9 done"' in text
    assert "  pause until 2026-12-31" in text
    assert "  - Goal 2 marked achieved" in text
    assert "stored as your report" in text
    assert "&#34;pause til friday&#34;" in rendered.html  # problems are escaped


def test_receipt_with_question_asks_it(shipped: Templates) -> None:
    rendered = _render(shipped, "receipt", "question")
    text = rendered.text
    assert rendered.subject == "A question about your reply"
    assert text.startswith("--- reply above this line ---\n")
    assert "One question before we go on:" in text
    assert "  Reply stop again within 7 days to end this partnership." in text
    assert "Done:" not in text and "stored as your report" not in text
    assert "Reply stop again within 7 days" in rendered.html


def test_receipt_to_the_partner_greets_the_partner(shipped: Templates) -> None:
    rendered = _render(shipped, "receipt", "partner", report_stored=True)
    assert rendered.text.split("\n")[1] == "Hi Bruno Keller,"
    assert "Hi Bruno Keller," in rendered.html
    assert "  - You accepted. Check-ins for Zoë Adler start on Mondays." in rendered.text
    assert "stored as your report" not in rendered.text + rendered.html


def test_receipt_without_role_is_for_the_member(shipped: Templates) -> None:
    ctx = sample_context("receipt")
    assert "role" not in ctx  # what the sender gives a member's receipt
    rendered = shipped.render("receipt", ctx)
    assert "Hi Zoë Adler," in rendered.text and "Hi Zoë Adler," in rendered.html


def test_receipt_escapes_quoted_user_text(shipped: Templates) -> None:
    rendered = _render(
        shipped, "receipt", "problems", problems=['Not understood: "<img src=x onerror=1>"']
    )
    assert "<img" not in rendered.html
    assert "&lt;img src=x onerror=1&gt;" in rendered.html
    assert '"<img src=x onerror=1>"' in rendered.text


# ------------------------------------------------------------------------------------------
# pause_notice


def test_pause_notice_paused_until(shipped: Templates) -> None:
    rendered = _render(shipped, "pause_notice", "paused")
    assert rendered.subject == ("Zoë Adler paused the public speaking check-ins until 2026-12-14")
    assert "paused the public speaking check-ins until\n2026-12-14." in rendered.text
    assert 'replies "resume"' in rendered.text
    assert rendered.text.startswith("Hi Bruno Keller,")
    assert "<strong>2026-12-14</strong>" in rendered.html


def test_pause_notice_paused_without_date(shipped: Templates) -> None:
    rendered = _render(shipped, "pause_notice", "paused open")
    assert rendered.subject == "Zoë Adler paused the public speaking check-ins"
    assert "for now" in rendered.text
    assert "until\n" not in rendered.text.split("Hi Bruno Keller,")[1].split("\n\n")[1][:50]


def test_pause_notice_resumed_and_stopped(shipped: Templates) -> None:
    resumed = _render(shipped, "pause_notice", "resumed")
    assert resumed.subject == "Zoë Adler is back: public speaking check-ins resume"
    assert "start\nagain with the next one" in resumed.text
    stopped = _render(shipped, "pause_notice", "stopped")
    assert stopped.subject == "Zoë Adler ended the public speaking partnership"
    assert "No more check-ins".lower() in stopped.text.lower()
    assert "Thank you for being there" in stopped.text
    assert "paused" not in stopped.text


# ------------------------------------------------------------------------------------------
# partner_note


def test_partner_note_forwards_the_words(shipped: Templates) -> None:
    ctx = sample_context("partner_note")
    rendered = shipped.render("partner_note", ctx)
    assert rendered.subject == "Bruno Keller answered your public speaking report"
    assert rendered.text.startswith(ctx["reply_marker"] + "\nHi Zoë Adler,")
    assert "  Zoë, a missed slot in release week is normal." in rendered.text
    assert "— Bruno Keller, Thursday 26 November, 21:40 (Europe/Berlin)" in rendered.text
    assert "counts as your report for this week" in rendered.text
    assert ctx["reply_address"] in rendered.text and ctx["reply_address"] in rendered.html


def test_partner_note_escapes_script_in_html(shipped: Templates) -> None:
    note = "Great week!\n<script>alert('hi')</script> & keep going"
    rendered = _render(shipped, "partner_note", note=note)
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#39;hi&#39;)&lt;/script&gt; &amp; keep going" in rendered.html
    assert "<script>alert('hi')</script> & keep going" in rendered.text


# ------------------------------------------------------------------------------------------
# summary


def test_summary_member_numbers_in_sentences(shipped: Templates) -> None:
    rendered = _render(shipped, "summary", "member")
    text = rendered.text
    assert rendered.subject == "Your public speaking partnership: the summary"
    assert "has come to\nan end: all goals achieved. Well done!" in text
    assert "- You reported in 4 of 5 weeks with a check-in (80%)." in text
    assert "- 1 week with a setback, honestly reported." in text
    assert "- You achieved 4 of 4 goals." in text
    assert "due 2026-12-18 (achieved)" in text


def test_summary_partner_numbers_in_sentences(shipped: Templates) -> None:
    rendered = _render(shipped, "summary", "partner")
    text = rendered.text
    assert rendered.subject == "Zoë Adler's public speaking partnership: the summary"
    assert text.startswith("Hi Bruno Keller,")
    assert "an end: the last due date has passed." in text
    assert "- Zoë Adler reported in 5 of 6 weeks with a check-in (83%)." in text
    assert "- 2 weeks with a setback, honestly reported." in text
    assert "- Zoë Adler achieved 1 of 4 goals." in text
    assert "due 2026-11-20 (not achieved)" in text
    assert "Well done" not in text


def test_summary_text_strip_line(shipped: Templates) -> None:
    text = _render(shipped, "summary", "member").text
    assert "Week by week:\n  W45 W46 W47 W48 W49 W50 W51\n   +   !   -   +   x   +   ?\n" in text
    assert "  + reported  ! setback  x missed  - paused  ? pending" in text


def test_summary_html_strip_cells_colours_and_labels(shipped: Templates) -> None:
    html = _render(shipped, "summary", "member").html
    cells = _cells(html)
    assert [label for label, _, _ in cells] == [f"W{n}" for n in range(45, 52)]
    states = ["reported", "setback", "paused", "reported", "missed", "reported", "pending"]
    assert [state for _, state, _ in cells] == states
    for _, state, colour in cells:
        assert colour == COLOURS.get(state, "#ffffff")
    # without colour: a mark in every cell, and the legend names each mark
    assert _marks(html) == [(state, MARKS[state]) for state in states]
    for state in ("reported", "setback", "missed", "paused", "pending"):
        assert re.search(rf">{re.escape(MARKS[state])}</span>&nbsp;{state}", html), state
    # pending: outlined (white with a dashed border), the others filled
    assert re.search(r'title="W51: pending" style="[^"]*border:2px dashed #6b7280', html)
    # labels under the cells and a legend
    for n in range(45, 52):
        assert f'text-align:center;">W{n}</td>' in html
    for state in ("reported", "setback", "missed", "paused", "pending"):
        assert f"&nbsp;{state}" in html
    # inline styles only: mail clients ignore classes
    assert "class=" not in html
    # the numbers at a glance
    assert ">4/5</div>" in html and ">1</div>" in html and ">4/4</div>" in html


def test_summary_long_history_wraps(shipped: Templates) -> None:
    history = [
        {"period": f"2026-W{n:02d}", "label": f"W{n}", "state": "reported"} for n in range(1, 31)
    ]
    rendered = _render(shipped, "summary", "member", history=history)
    for line in rendered.text.splitlines():
        assert len(line) <= 72
    assert rendered.text.count("W1 ") == 1
    assert len(_cells(rendered.html)) == 30
    assert rendered.html.count("<tr>") == 1 + 2 * 3  # numbers row + 3 strip rows of <= 13


def test_summary_strip_escapes_labels(shipped: Templates) -> None:
    history = [{"period": "2026-W45", "label": "<W45>", "state": "missed"}]
    html = _render(shipped, "summary", "partner", history=history).html
    assert "<W45>" not in html
    assert 'title="&lt;W45&gt;: missed"' in html


# ------------------------------------------------------------------------------------------
# consent_notice


def test_consent_notice_declined_quotes_the_partner(shipped: Templates) -> None:
    ctx = sample_context("consent_notice", variant="declined")
    assert set(ctx) == {"service", "partnership", "member", "partner", "state", "days", "text"}
    rendered = shipped.render("consent_notice", ctx)
    text = rendered.text
    assert rendered.subject == "Bruno Keller declined to partner Zoë Adler (public speaking)"
    assert "declined to be" in text and "(partnership 7), 3 days after the invitation." in text
    assert "Bruno Keller wrote:\n  Sorry, I can't take this on right now" in text
    assert "mailflow partners suggest --member zoe.adler@example.com \\" in text
    assert "&lt;travel&gt;" in rendered.html and "<travel>" not in rendered.html


def test_consent_notice_declined_without_words(shipped: Templates) -> None:
    text = _render(shipped, "consent_notice", "declined silently").text
    assert "wrote:" not in text
    assert "No check-ins go out for this partnership." in text


def test_consent_notice_no_answer(shipped: Templates) -> None:
    rendered = _render(shipped, "consent_notice", "no answer")
    assert rendered.subject == "No answer from Bruno Keller after 7 days (public speaking)"
    assert "has not answered" in rendered.text and "in 7 days." in rendered.text
    assert "No check-ins go out until Bruno Keller accepts." in rendered.text
    one = _render(shipped, "consent_notice", "no answer", days=1)
    assert one.subject == "No answer from Bruno Keller after 1 day (public speaking)"


# ------------------------------------------------------------------------------------------
# The strip in digest and no_report


def test_digest_shows_the_strip(shipped: Templates) -> None:
    rendered = shipped.render("digest", sample_context("digest", setback=True))
    assert "Week by week:\n  W45 W46 W47 W48\n   +   !   -   !\n" in rendered.text
    assert "  + reported  ! setback  - paused" in rendered.text
    cells = _cells(rendered.html)
    assert cells == [
        ("W45", "reported", COLOURS["reported"]),
        ("W46", "setback", COLOURS["setback"]),
        ("W47", "paused", COLOURS["paused"]),
        ("W48", "setback", COLOURS["setback"]),
    ]
    # The strip sits between the reports and the goals.
    html = rendered.html
    assert html.index("Missed my Wednesday slot") < html.index("Week by week:")
    assert html.index("Week by week:") < html.index("Goals:")


def test_no_report_shows_the_strip_with_the_missed_week(shipped: Templates) -> None:
    rendered = shipped.render("no_report", sample_context("no_report"))
    assert "   +   !   -   x\n" in rendered.text
    assert _cells(rendered.html)[-1] == ("W48", "missed", COLOURS["missed"])


def test_digest_without_history_still_renders(shipped: Templates) -> None:
    """Until every sender passes ``history``, a digest without it simply has no strip."""
    for name in ("digest", "no_report"):
        ctx = sample_context(name)
        del ctx["history"]
        rendered = shipped.render(name, ctx)
        assert "Week by week" not in rendered.text + rendered.html


# ------------------------------------------------------------------------------------------
# check() covers the new templates, and the CLI previews them


def test_check_reports_typo_in_a_new_template_branch(tmp_path: Path) -> None:
    shipped_text = (
        Path(__file__).resolve().parent.parent / "templates" / "receipt.txt.j2"
    ).read_text(encoding="utf-8")
    broken = shipped_text.replace(
        "{{ partner.name }} will see it.", "{{ partner.nmae }} will see it."
    )
    assert broken != shipped_text
    (tmp_path / "receipt.txt.j2").write_text(broken, encoding="utf-8")
    problems = Templates(tmp_path).check()
    assert len(problems) == 1
    assert re.match(r"^.*receipt\.txt\.j2:\d+: .*nmae.* \(sample: receipt \w+\)$", problems[0])


def test_cli_preview_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mailflow = Mailflow(tmp_path, capsys)
    result = mailflow.ok("templates", "preview", "summary")
    assert result.out.startswith("Subject: Your public speaking partnership: the summary\n")
    assert "You reported in 4 of 5 weeks with a check-in (80%)." in result.out
    assert "W45 W46 W47 W48 W49 W50 W51" in result.out
    assert mailflow.ok("templates", "check").out.strip() == "templates ok"


@pytest.mark.parametrize("name", NEW_NAMES)
def test_cli_preview_every_new_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    result = Mailflow(tmp_path, capsys).ok("templates", "preview", name)
    assert result.out.startswith("Subject: ")


def test_check_warns_of_an_override_file_no_template_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt override (chekin.txt.j2) would be ignored in silence: check names it, with
    the file it probably meant; a partial (_mine.j2) may be called anything."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "chekin.txt.j2").write_text("Hello {{ member.name }}\n", encoding="utf-8")
    (own / "_mine.j2").write_text("{# a partial #}\n", encoding="utf-8")
    mailflow = Mailflow(tmp_path, capsys, f'[templates]\ndir = "{own}"\n')
    result = mailflow.ok("templates", "check")
    assert result.out == "templates ok\n"
    assert result.err == (
        f"warning: {own / 'chekin.txt.j2'}: replaces no template, so it is not used"
        ' (did you mean "checkin.txt.j2"?)\n'
    )


def test_cli_preview_refuses_setback_where_it_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--setback` shapes only the digest's sample: elsewhere it is a usage error, not ignored."""
    mailflow = Mailflow(tmp_path, capsys)
    err = mailflow.bad("templates", "preview", "checkin", "--setback", code=2)
    assert err.startswith("error: --setback applies only to digest, not checkin (see "), err
    ack = mailflow.bad("templates", "preview", "checkin_ack", "--setback", code=2)
    assert "(its setback sample: --variant setback)" in ack
    assert "SETBACK" in mailflow.ok("templates", "preview", "digest", "--setback").out
    own = mailflow.ok("templates", "preview", "checkin_ack", "--variant", "setback")
    assert "Setback" in own.out
