"""The fan-out's shortcuts (issue 16) give exactly what the long way gives.

Each shortcut skips general machinery for the common case: the relay commands for a plain
address without smtplib's address parser, a template's dict keys read without the sandbox's
attribute probe, one header check per message. Each is compared here with the long way on
real inputs (a real relay, real templates, the shipped check-in for different people, zones
and languages of names).
"""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta, timezone

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape
from smtp_recorder import RecordingSMTPServer

from mailflow import mime
from mailflow.compose import BudgetedEnvironment, Templates
from mailflow.mime import build_message, message_bytes, plain_address
from mailflow.outbox import _mail, _rcpt
from mailflow.samples import sample_context

WHEN = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class _Logged(smtplib.SMTP):
    """A real client that keeps every command line it sends."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.sent: list[str] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def putcmd(self, cmd: str, args: str = "") -> None:
        self.sent.append(f"{cmd} {args}")
        super().putcmd(cmd, args)


@pytest.mark.parametrize(
    "sender, rcpt, options",
    [
        ("bounces@hot.example.com", "ada@example.com", []),
        ("bounces+x.y=z@hot.example.com", "o'brien.k@sub.example-2.org", ["SIZE=1200"]),
        ("bounces@hot.example.com", "Ada <ada@example.com>", []),  # not plain: smtplib's way
        ("bounces@hot.example.com", '"odd name"@example.com', []),
    ],
)
def test_relay_commands_are_smtplibs(sender: str, rcpt: str, options: list[str]) -> None:
    with RecordingSMTPServer() as relay:
        ours = _Logged("127.0.0.1", relay.port, local_hostname="hot.example.com", timeout=10)
        theirs = _Logged("127.0.0.1", relay.port, local_hostname="hot.example.com", timeout=10)
        try:
            for conn in (ours, theirs):
                conn.ehlo()
                conn.sent.clear()
            got_ours = (_mail(ours, sender, options), _rcpt(ours, rcpt))
            got_theirs = (theirs.mail(sender, options), theirs.rcpt(rcpt))
        finally:
            ours.quit()
            theirs.quit()
    assert ours.sent == theirs.sent
    assert got_ours == got_theirs


def test_plain_address_is_its_own_quoted_form() -> None:
    for addr in ("a@b.c", "bounces+c12-x=y@hot.example.com", "x.y-z@ex-ample.org"):
        assert plain_address(addr)
        assert smtplib.quoteaddr(addr) == f"<{addr}>"
    for addr in ("Ada <a@b.c>", '"a b"@c.d', "zoë@example.com", "a@b@c", "a@[127.0.0.1]", "a"):
        assert not plain_address(addr)


def _pair_envs() -> tuple[jinja2.Environment, jinja2.Environment]:
    kw = {"undefined": jinja2.StrictUndefined, "autoescape": True}
    return BudgetedEnvironment(**kw), SandboxedEnvironment(**kw)


@pytest.mark.parametrize(
    "source",
    [
        "{{ d.name }} {{ d.n + 1 }}",
        "{{ d.items()|list|length }} {{ d.keys|string|length > 0 }}",  # dict methods win
        "{{ d.get('name') }} {{ d['n'] }} {{ d.missing is defined }}",
        "{% for g in d.goals %}{{ g.text }}{{ g.pop is defined }}{% endfor %}",
        "{{ d.__class__ is defined }} {{ d.mro is defined }}",  # the sandbox still guards
    ],
)
def test_dict_keys_read_as_the_sandbox_reads_them(source: str) -> None:
    ctx = {"d": {"name": "Ada <&>", "n": 2, "items": "shadowed", "goals": [{"text": "x"}]}}
    ours, theirs = _pair_envs()
    assert ours.from_string(source).render(ctx) == theirs.from_string(source).render(ctx)


def test_a_missing_key_is_the_same_error() -> None:
    ours, theirs = _pair_envs()
    errors = []
    for env in (ours, theirs):
        with pytest.raises(jinja2.UndefinedError) as info:
            env.from_string("{{ d.nope }}").render({"d": {}})
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def _people() -> list[tuple[str, str]]:
    return [("Ada Lovelace", "Grace Hopper"), ("Zoë Adler", "Ngũgĩ wa Thiong'o"), ("李雷", "Ана")]


def test_checkins_for_different_people_are_the_full_message() -> None:
    """The check-in as a fan-out writes it (compiled templates held, one header check) is
    the email package's message, byte for byte, for people of several languages and zones,
    and rendering one person never leaks into the next."""
    templates = Templates()
    memo: dict[bytes, str] = {}  # body lines encoded once, across the people (as a tick)
    seen = set()
    for i, (member, partner) in enumerate(_people()):
        ctx = sample_context("checkin")
        ctx["member"] = {**ctx["member"], "name": member}
        ctx["partner"] = {**ctx["partner"], "name": partner}
        fresh = Templates().render("checkin", ctx)  # a new set: nothing held from before
        rendered = templates.render("checkin", ctx)
        assert rendered == fresh
        assert member in rendered.text and str(escape(partner)) in rendered.html
        for date in (WHEN, WHEN.astimezone(timezone(timedelta(hours=-5 + 7 * i)))):
            kw = {
                "from_address": "mailflow@hot.example.com",
                "from_name": "mailflow",
                "to_address": f"m{i}@example.com",
                "to_name": member,
                "message_id": f"<checkin.c{i}@hot.example.com>",
                "date": date,
                "reply_to": f"checkin+c{i}-x@hot.example.com",
            }
            fast = message_bytes(rendered, qp_memo=memo, **kw)  # type: ignore[arg-type]
            msg = build_message(rendered, **kw)  # type: ignore[arg-type]
            boundary = fast.split(b'boundary="', 1)[1].split(b'"', 1)[0].decode()
            msg.set_boundary(boundary)
            assert fast == msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
            seen.add(fast)
    assert len(seen) == 2 * len(_people())
    assert memo  # the shared lines were taken from it


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_lines_encoded_once_are_the_whole_body_encoded(texts: list[str]) -> None:
    """Quoted-printable line by line (from the memo) is the body encoded whole, for any
    text: long lines, trailing spaces, '=', CR and other line breaks, non-ASCII."""
    memo: dict[bytes, str] = {}
    shell = Templates().preview("checkin").html
    for text in [shell, *texts, *texts, shell + "".join(texts)]:
        assert mime._qp_body(text, memo) == mime._qp_body(text)


def test_a_full_memo_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "QP_MEMO_LINES", 3)
    memo: dict[bytes, str] = {}
    text = "".join(f"line {i} = {'x' * i}\n" for i in range(0, 200, 7))
    assert mime._qp_body(text, memo) == mime._qp_body(text)
    assert len(memo) <= 3
