"""Tests for mailflow.compose: the shipped templates, checking, overrides and MIME building."""

from __future__ import annotations

import email
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from pathlib import Path

import pytest

from mailflow.compose import SHIPPED_DIR, TEMPLATE_NAMES, Rendered, TemplateError, Templates
from mailflow.mime import build_message
from mailflow.samples import sample_context, sample_variants

VARIANTS = [
    ("checkin", {}),
    ("reminder", {}),
    ("digest", {}),
    ("digest", {"setback": True}),
    ("digest", {"updated": True}),
    ("digest", {"setback": True, "updated": True}),
    ("no_report", {}),
    ("bounce_notice", {}),
    *[(name, {"variant": variant}) for name in TEMPLATE_NAMES for variant in sample_variants(name)],
]


@pytest.fixture(scope="module")
def shipped() -> Templates:
    return Templates()


def _write(path: Path, text: str, bump: int = 0) -> None:
    """Write a template and move its mtime forward, so a change is seen on any filesystem."""
    path.write_text(text, encoding="utf-8")
    st = path.stat()
    later = st.st_mtime_ns + (bump + 1) * 2_000_000_000
    os.utime(path, ns=(later, later))


# ------------------------------------------------------------------------------------------
# The shipped set


def test_shipped_dir_has_every_file() -> None:
    for name in TEMPLATE_NAMES:
        for part in ("subject", "txt", "html"):
            assert (SHIPPED_DIR / f"{name}.{part}.j2").is_file()


@pytest.mark.parametrize(("name", "flags"), VARIANTS)
def test_every_shipped_template_renders(shipped: Templates, name: str, flags: dict) -> None:
    rendered = shipped.render(name, sample_context(name, **flags))
    assert isinstance(rendered, Rendered)
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.subject == rendered.subject.strip()
    assert rendered.text.strip()
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert "</html>" in rendered.html
    for line in rendered.text.splitlines():
        assert len(line) <= 72, line
    assert "mailflow" in rendered.html  # footer


def test_check_is_clean_on_shipped_set(shipped: Templates) -> None:
    assert shipped.check() == []


def test_checkin_text_starts_with_marker_and_shows_goals(shipped: Templates) -> None:
    ctx = sample_context("checkin")
    text = shipped.render("checkin", ctx).text
    assert text.splitlines()[0] == "--- reply above this line ---" == ctx["reply_marker"]
    for goal in ctx["goals"]:
        assert goal["due"] in text
        assert goal["text"].split()[0] in text
    assert "due 2026-12-18 (25 days left)" in text
    assert "due 2026-11-24 (1 day left)" in text
    assert "due 2026-11-20 (overdue by 3 days)" in text
    assert "due 2026-11-16 (done)" in text
    assert "Done: what you did this week" in text
    assert 'Setback: anything that didn\'t go to plan (or "none")' in text
    assert "Next: what you'll do next week" in text
    assert ctx["reply_address"] in text


def test_reminder_also_starts_with_marker(shipped: Templates) -> None:
    text = shipped.preview("reminder").text
    assert text.startswith("--- reply above this line ---\n")
    assert "Done:" in text and "Setback:" in text and "Next:" in text


def test_setback_digest_puts_saddle_first_with_why(shipped: Templates) -> None:
    ctx = sample_context("digest", setback=True)
    rendered = shipped.render("digest", ctx)
    saddle_start = ctx["partnership"]["saddle"].split(".")[0]
    report = ctx["reports"][0]
    text = rendered.text
    assert saddle_start in text
    assert text.index(saddle_start) < text.index(report["done"])
    assert "SETBACK" in text
    assert "I want to present my own team's work" in text  # the why
    assert rendered.subject.startswith("Setback:")
    html = rendered.html
    assert "back in the saddle" in html
    assert html.index(saddle_start) < html.index(report["done"])
    assert "#fef3c7" in html  # the highlighted box


def test_report_digest_has_sections_and_no_saddle(shipped: Templates) -> None:
    ctx = sample_context("digest")
    rendered = shipped.render("digest", ctx)
    report = ctx["reports"][0]
    assert "Done:" in rendered.text and "Next:" in rendered.text
    assert "Practised the talk twice" in rendered.text
    assert "Ask Bruno for 10 minutes" in rendered.text
    assert ctx["partnership"]["saddle"].split(".")[0] not in rendered.text
    assert "SETBACK" not in rendered.text
    assert "due 2026-12-18 (25 days left)" in rendered.text
    assert report["received_at"] in rendered.text
    assert not rendered.subject.startswith(("Setback", "Updated"))


def test_updated_digest_says_so(shipped: Templates) -> None:
    rendered = shipped.render("digest", sample_context("digest", updated=True))
    assert rendered.subject.startswith("Updated:")
    assert "updated digest" in rendered.text
    assert "Report 1 of 2" in rendered.text and "Report 2 of 2" in rendered.text
    assert "I booked the team meeting slot" in rendered.text  # free-text report shown as is


def test_no_report_says_no_report_came(shipped: Templates) -> None:
    rendered = shipped.preview("no_report")
    assert "No report came from Zoë Adler this week." in rendered.text
    assert "I want to present my own team's work" in rendered.text
    assert "due 2026-12-18" in rendered.text
    assert "No report came from Zoë Adler this week." in rendered.html
    assert rendered.subject == "No report from Zoë Adler for week 48 of 2026"


def test_digest_and_no_report_carry_history() -> None:
    for name, flags in (("digest", {}), ("digest", {"setback": True}), ("no_report", {})):
        history = sample_context(name, **flags)["history"]
        assert [week["label"] for week in history] == ["W45", "W46", "W47", "W48"]
        assert {week["state"] for week in history} <= {
            "reported",
            "setback",
            "missed",
            "paused",
            "pending",
        }
        assert history[-1]["period"] == "2026-W48"


def test_bounce_notice_names_the_mail_and_the_command(shipped: Templates) -> None:
    ctx = sample_context("bounce_notice")  # the partner's introduction bounced
    assert set(ctx) == {
        "service", "address", "reason", "period", "mail", "partnership", "role", "command"
    }  # fmt: skip
    rendered = shipped.render("bounce_notice", ctx)
    assert rendered.subject == "The introduction to bruno.keller@example.com bounced"
    text = " ".join(rendered.text.split())
    assert "The introduction to bruno.keller@example.com for partnership 7" in text
    assert "mailflow partnerships resend-intro 7" in text
    assert "mailflow partnerships consent 7 --accepted" in text
    assert "Recipient address rejected" in rendered.text
    assert "&lt;bruno.keller@example.com&gt;" in rendered.html
    assert "resend-intro 7" in rendered.html
    unknown = shipped.render("bounce_notice", sample_context("bounce_notice", variant="unknown"))
    assert unknown.subject == "Mail to bruno.keller@example.com is bouncing"
    assert "people update bruno.keller@example.com --clear-bouncing" in unknown.text
    checkin = shipped.render("bounce_notice", sample_context("bounce_notice", variant="check-in"))
    assert checkin.subject == "The check-in to bruno.keller@example.com bounced"


def test_html_escapes_user_text_but_text_shows_it_raw(shipped: Templates) -> None:
    ctx = sample_context("digest")
    ctx["reports"][0]["parts"][0] = {
        "label": "Done",
        "text": "<script>alert('x')</script> & more",
        "paragraphs": ["<script>alert('x')</script> & more"],
    }
    ctx["member"]["name"] = "Zoë <b>Adler</b>"
    rendered = shipped.render("digest", ctx)
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in rendered.html
    assert "<b>Adler</b>" not in rendered.html
    assert "<script>alert('x')</script> & more" in rendered.text
    assert "Zoë <b>Adler</b>" in rendered.subject  # subjects are plain text


def test_subject_is_one_line(shipped: Templates) -> None:
    ctx = sample_context("checkin")
    ctx["partnership"]["skill"] = "public\r\n  speaking\x00"
    assert shipped.render("checkin", ctx).subject == (
        "Your public speaking check-in for week 48 of 2026"
    )


def test_preview_unknown_name_lists_valid_names(shipped: Templates) -> None:
    with pytest.raises(TemplateError) as info:
        shipped.preview("quarantine_notice")
    message = str(info.value)
    for name in TEMPLATE_NAMES:
        assert name in message
    with pytest.raises(TemplateError):
        shipped.render("nope", {})


def test_preview_setback(shipped: Templates) -> None:
    assert "SETBACK" in shipped.preview("digest", setback=True).text
    assert "SETBACK" not in shipped.preview("digest").text


def test_render_missing_variable_is_template_error(shipped: Templates) -> None:
    ctx = sample_context("checkin")
    del ctx["reply_address"]
    with pytest.raises(TemplateError) as info:
        shipped.render("checkin", ctx)
    assert re.match(
        r"^.*checkin\.(txt|html)\.j2:\d+: 'reply_address' is undefined$", str(info.value)
    )


# ------------------------------------------------------------------------------------------
# Overrides and check()


def test_override_falls_back_for_missing_files(tmp_path: Path) -> None:
    _write(tmp_path / "checkin.subject.j2", "Hey {{ member.name }}, check-in time")
    templates = Templates(tmp_path)
    assert templates.check() == []
    rendered = templates.preview("checkin")
    assert rendered.subject == "Hey Zoë Adler, check-in time"
    assert rendered.text.startswith("--- reply above this line ---")  # shipped body
    assert templates.preview("digest").subject.endswith("report for week 48 of 2026")


def test_override_of_shared_layout_applies_to_all_html(tmp_path: Path) -> None:
    layout = (SHIPPED_DIR / "_layout.html.j2").read_text(encoding="utf-8")
    _write(tmp_path / "_layout.html.j2", layout.replace("Sent automatically", "ACME mail"))
    templates = Templates(tmp_path)
    assert templates.check() == []
    assert "ACME mail" in templates.preview("bounce_notice").html


def test_missing_override_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="templates directory not found"):
        Templates(tmp_path / "nope")


def test_syntax_error_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "reminder.txt.j2"
    _write(path, "{{ reply_marker }}\nHi {{ member.name }},\n\n{% if goals %}\nno end\n")
    problems = Templates(tmp_path).check()
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:5: ")
    assert "endif" in problems[0]
    assert "\n" not in problems[0]


def test_undefined_variable_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "no_report.html.j2"
    _write(path, "<p>Hi {{ partner.name }}</p>\n<p>\n{{ membr.name }}</p>\n")
    problems = Templates(tmp_path).check()
    assert problems == [f"{path}:3: 'membr' is undefined"]


def test_undefined_key_in_branch_the_samples_skip_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "digest.txt.j2"
    _write(
        path,
        "Hi {{ partner.name }}\n"
        "{% for goal in goals %}{{ goal.text }}{% endfor %}\n"
        "{% if updated and not updated %}\n"
        "{{ member.nmae }}\n"
        "{% for goal in goals %}{{ goal.txt }}{% endfor %}\n"
        "{{ partnr }}\n"
        "{% endif %}\n",
    )
    problems = Templates(tmp_path).check()
    assert f"{path}:4: 'member' has no attribute 'nmae'" in problems
    assert f"{path}:5: 'goal' has no attribute 'txt'" in problems
    assert f"{path}:6: 'partnr' is undefined" in problems


def test_error_in_included_helper_names_the_helper(tmp_path: Path) -> None:
    path = tmp_path / "_macros.j2"
    _write(path, "{% macro goal_status(goal) %}\n{{ goal.nope }}\n{% endmacro %}\n")
    problems = Templates(tmp_path).check()
    assert problems
    assert any(p.startswith(f"{path}:2: ") for p in problems), problems


def test_sandbox_blocks_dunder_access(tmp_path: Path) -> None:
    path = tmp_path / "checkin.txt.j2"
    _write(path, "{{ reply_marker }}\n{{ ''.__class__.__mro__ }}\n")
    templates = Templates(tmp_path)
    problems = templates.check()
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:2: ")
    assert "unsafe" in problems[0]
    with pytest.raises(TemplateError, match="unsafe"):
        templates.preview("checkin")


def test_sandbox_blocks_calling_into_python(tmp_path: Path) -> None:
    path = tmp_path / "checkin.txt.j2"
    _write(path, "{{ reply_marker }}\n{{ goals.__class__ }}{{ cycler.__init__.__globals__ }}\n")
    problems = Templates(tmp_path).check()
    assert problems and problems[0].startswith(f"{path}:2: ")


def test_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "checkin.txt.j2"
    path.write_bytes(b"caf\xe9 {{ member.name }}\n")
    problems = Templates(tmp_path).check()
    assert any(p.startswith(f"{path}: not valid UTF-8") for p in problems), problems


def test_template_error_str_format() -> None:
    assert str(TemplateError("boom\nbang", "a.j2", 3)) == "a.j2:3: boom bang"
    assert str(TemplateError("boom", "a.j2")) == "a.j2: boom"
    assert str(TemplateError("boom")) == "boom"


# ------------------------------------------------------------------------------------------
# refresh(): the last good set stays in use


def test_refresh_keeps_last_good_and_switches_when_fixed(tmp_path: Path) -> None:
    path = tmp_path / "checkin.subject.j2"
    _write(path, "Version one for {{ member.name }}")
    templates = Templates(tmp_path)
    assert templates.check() == []
    assert templates.refresh() == []
    assert templates.preview("checkin").subject == "Version one for Zoë Adler"

    _write(path, "Version two for {{ member.nam }}", bump=1)  # a typo
    problems = templates.refresh()
    assert problems == [f"{path}:1: 'dict object' has no attribute 'nam'"]
    assert templates.preview("checkin").subject == "Version one for Zoë Adler"
    assert templates.refresh() == problems  # still broken, still reported, still version one
    assert templates.preview("checkin").subject == "Version one for Zoë Adler"

    _write(path, "Version {% if x %}three", bump=2)  # a syntax error
    assert templates.refresh()[0].startswith(f"{path}:1: ")
    assert templates.preview("checkin").subject == "Version one for Zoë Adler"

    _write(path, "Version three for {{ member.name }}", bump=3)  # fixed
    assert templates.refresh() == []
    assert templates.preview("checkin").subject == "Version three for Zoë Adler"
    assert templates.refresh() == []


def test_refresh_sees_removed_override(tmp_path: Path) -> None:
    path = tmp_path / "checkin.subject.j2"
    _write(path, "Custom")
    templates = Templates(tmp_path)
    assert templates.preview("checkin").subject == "Custom"
    path.unlink()
    assert templates.refresh() == []
    assert templates.preview("checkin").subject.startswith("Your public speaking check-in")


# ------------------------------------------------------------------------------------------
# build_message


def _message(**overrides: object) -> email.message.EmailMessage:
    kwargs: dict = {
        "from_address": "mailflow@mailflow.example.com",
        "from_name": "mailflow – Zoë's partner, Inc.",
        "to_address": "bruno.keller@example.com",
        "to_name": "Brünö Keller",
        "message_id": "<digest.7.2026-W48@mailflow.example.com>",
        "date": datetime(2026, 11, 23, 9, 0, tzinfo=timezone(timedelta(hours=1))),
    }
    kwargs.update(overrides)
    rendered = kwargs.pop("rendered", None) or Templates().preview("digest", setback=True)
    return build_message(rendered, **kwargs)


def test_build_message_round_trips_headers_and_bodies() -> None:
    rendered = Templates().preview("digest", setback=True)
    msg = _message(
        rendered=rendered,
        reply_to="checkin+abc@mailflow.example.com",
        in_reply_to="<checkin.7.2026-W48@mailflow.example.com>",
        references=["<a@mailflow.example.com>", "<checkin.7.2026-W48@mailflow.example.com>"],
    )
    raw = msg.as_bytes()
    assert b"\r\n" in raw
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # RFC 2047 encoded words, no raw UTF-8 in headers
    assert "Zo" in rendered.subject and "ë" in rendered.subject
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == rendered.subject
    assert parsed["From"].addresses[0].display_name == "mailflow – Zoë's partner, Inc."
    assert parsed["From"].addresses[0].addr_spec == "mailflow@mailflow.example.com"
    assert parsed["To"].addresses[0].display_name == "Brünö Keller"
    assert parsed["Message-ID"] == "<digest.7.2026-W48@mailflow.example.com>"
    assert parsed["Reply-To"] == "checkin+abc@mailflow.example.com"
    assert parsed["In-Reply-To"] == "<checkin.7.2026-W48@mailflow.example.com>"
    assert parsed["References"].split() == [
        "<a@mailflow.example.com>",
        "<checkin.7.2026-W48@mailflow.example.com>",
    ]
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Auto-Response-Suppress"] == "All"
    assert parsed["MIME-Version"] == "1.0"
    assert len(parsed.get_all("MIME-Version")) == 1
    assert parsed["Date"].datetime == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert parsed["Date"] == "Mon, 23 Nov 2026 09:00:00 +0100"
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == rendered.text
    assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == rendered.html
    assert [p.get_content_charset() for p in parsed.iter_parts()] == ["utf-8", "utf-8"]
    for line in raw.split(b"\r\n"):
        assert len(line) <= 78


def test_build_message_optional_headers_absent_by_default() -> None:
    msg = _message()
    assert msg["Reply-To"] is None and msg["In-Reply-To"] is None and msg["References"] is None


@pytest.mark.parametrize(
    "override",
    [
        {"to_name": "Bruno\r\nBcc: victim@example.com"},
        {"to_address": "bruno@example.com\nBcc: victim@example.com"},
        {"from_name": "mailflow\x00"},
        {"message_id": "<a@b>\r\nX-Injected: yes"},
        {"reply_to": "checkin+x@mailflow.example.com\rBcc: v@example.com"},
        {"in_reply_to": "<a@b>\nX: y"},
        {"references": ["<a@b>", "<c@d>\r\nX: y"]},
        {"rendered": Rendered(subject="Hello\r\nBcc: victim@example.com", text="t", html="h")},
        {"rendered": Rendered(subject="Hello\u2028there", text="t", html="h")},
        {"to_address": "not an address"},
        {"date": datetime(2026, 11, 23, 9, 0)},  # naive
    ],
)
def test_build_message_refuses_header_injection(override: dict) -> None:
    with pytest.raises(ValueError):
        _message(**override)


def test_digest_of_free_text_and_one_label_as_the_partner_reads_it(shipped: Templates) -> None:
    """The sample of a released report: free text hard-wrapped at 72 columns by her client, then
    only a "Next week:" label, and a setback admitted in the free text."""
    ctx = sample_context("digest", variant="released")
    rendered = shipped.render("digest", ctx)
    text, html = rendered.text, rendered.html
    # Every word she wrote, and no section she did not write.
    flat = " ".join(text.split())
    assert "Rough week, I fell behind: the release slipped twice" in flat
    assert "I did read the chapter on openings." in flat
    assert "Next:\n  two short runs before Friday" in text
    assert "Setback: none" not in text and "Setback\n  none" not in text
    assert "(nothing written)" not in text + html
    assert "SETBACK" in text and "[setback]" in text
    assert "released it today" in text and "released it today" in html
    # In HTML her hard-wrapped lines are one paragraph again.
    assert (
        '<p style="margin:0 0 8px;white-space:pre-wrap;">Rough week, I fell behind: the release '
        "slipped twice and I stayed late three evenings, so the Wednesday practice slot went "
        "too. I did read the chapter on openings.</p>"
    ) in html
    assert ">Setback</strong>" in html  # the report's mark, in words as well as colour
