"""Names and goals in any script (Chinese, Arabic, Devanagari, emoji) survive every template,
the subject, the digest and the wire: each shipped template's sample context with its people
and goals rewritten in other scripts, rendered by the real templates, written by `mime` to an
international address, and read back by the email package. (The export and a real week in
these scripts: tests/test_international.py.)"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from typing import Any

import pytest

from mailflow import samples
from mailflow.compose import TEMPLATE_NAMES, Templates
from mailflow.export import export_rows, write_csv, write_json
from mailflow.mime import message_bytes
from mailflow.samples import sample_context, sample_variants

# Longer spellings first: "Zoë Adler" before "Zoë".
SCRIPTS = {
    "Zoë Adler": "王芳 Wang",
    "Zoë": "王芳",
    "Bruno Keller": "محمد علي",
    "Bruno": "محمد",
    "Finish the online course": "पाठ्यक्रम पूरा करें 🎤 Finish the online course",
    "Give a 10-minute talk": "在全员大会上演讲 🎉 Give a 10-minute talk",
}
VARIANTS = [
    ("checkin", {}),
    ("reminder", {}),
    ("digest", {}),
    ("digest", {"setback": True}),
    ("digest", {"updated": True}),
    ("no_report", {}),
    ("bounce_notice", {}),
    *[(name, {"variant": variant}) for name in TEMPLATE_NAMES for variant in sample_variants(name)],
]


def rewrite(value: Any) -> Any:
    if isinstance(value, str):
        for old, new in SCRIPTS.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: rewrite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(rewrite(v) for v in value)
    return value


@pytest.fixture(scope="module")
def shipped() -> Templates:
    return Templates()


@pytest.mark.parametrize(("name", "flags"), VARIANTS)
def test_every_template_keeps_every_script(shipped: Templates, name: str, flags: dict) -> None:
    ctx = sample_context(name, **flags)
    before = shipped.render(name, ctx)
    after = shipped.render(name, rewrite(ctx))
    data = message_bytes(
        after,
        from_address="mailflow@mailflow.example.com",
        from_name="Hot Team",
        to_address="王芳@例子.example",
        to_name="王芳 Wang",
        message_id="<mf.1@mailflow.example.com>",
        date=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
    )
    msg = message_from_bytes(data, policy=policy.SMTPUTF8)
    subject = str(msg["Subject"])
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert subject == after.subject
    assert msg["To"].addresses[0].display_name == "王芳 Wang"
    seen = 0
    for old, new in SCRIPTS.items():
        if old in before.subject:
            assert new.split()[0] in subject, (old, subject)
        if old in before.text:
            assert new.split()[0] in text, (old, name)
            seen += 1
        if old in before.html:
            assert new.split()[0] in html, (old, name)
    assert not any(old in text for old in SCRIPTS if old not in new_words()), name
    if name in ("checkin", "digest", "intro", "summary"):
        assert seen >= 2, name  # these name people and goals: the test reached them


def new_words() -> str:
    return " ".join(SCRIPTS.values())


def test_the_export_keeps_every_script() -> None:
    rows = export_rows({samples.RUNNING.id: samples.RUNNING}, [samples.GOOD], date(2026, 1, 1))
    rows = [rewrite(row) for row in rows]
    rows[0]["text"] = "练习了两次 🎉 — مرحبا — नमस्ते"
    out = io.StringIO()
    write_json(rows, out)
    assert json.loads(out.getvalue())[0]["text"] == "练习了两次 🎉 — مرحبا — नमस्ते"
    out = io.StringIO()
    write_csv(rows, out)
    assert "练习了两次 🎉 — مرحبا — नमस्ते" in out.getvalue()
