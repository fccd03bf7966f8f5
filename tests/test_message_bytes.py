"""compose.message_bytes writes exactly the bytes build_message's message serialises to."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.compose import TEMPLATE_NAMES, Templates
from mailflow.mime import Rendered, build_message, message_bytes

WHEN = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def both(rendered: Rendered, **kw: object) -> tuple[bytes, bytes]:
    fast = message_bytes(rendered, **kw)  # type: ignore[arg-type]
    msg = build_message(rendered, **kw)  # type: ignore[arg-type]
    boundary = re.search(rb'boundary="([^"]+)"', fast)
    assert boundary is not None
    msg.set_boundary(boundary.group(1).decode())
    return fast, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def headers(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "from_address": "mailflow@hot.example.com",
        "from_name": "mailflow",
        "to_address": "ada@example.com",
        "to_name": "Ada Lovelace",
        "message_id": "<checkin.c12-2026w48-abcdefghijklmnopqrstuvwxyz@hot.example.com>",
        "date": WHEN,
        "reply_to": "checkin+c12-2026w48-abcdefghijklmnopqrstuvwxyz@hot.example.com",
    }
    base.update(over)
    return base


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_shipped_templates_give_identical_bytes(name: str) -> None:
    rendered = Templates().preview(name)
    for to_name in ("Ada Lovelace", "", "Zoë Adler", "Dr. Who", "x" * 70):
        for date in (WHEN, WHEN.astimezone(timezone(timedelta(hours=-5)))):
            fast, slow = both(rendered, **headers(to_name=to_name, date=date))
            assert fast == slow


def test_long_ids_and_references() -> None:
    rendered = Rendered(subject="Hi", text="x\n", html="<p>x</p>\n")
    for n in (1, 40, 58, 59, 60, 80, 200):
        mid = f"<c.{'a' * n}@hot.example.com>"
        fast, slow = both(
            rendered, **headers(message_id=mid, in_reply_to=mid, references=[mid, "<b@c>"])
        )
        assert fast == slow


@settings(max_examples=150, deadline=None)
@given(
    subject=st.text(min_size=1, max_size=90).filter(lambda s: s.strip()),
    text=st.text(max_size=400),
    name=st.text(max_size=30),
)
def test_any_content_gives_identical_bytes_or_the_same_error(
    subject: str, text: str, name: str
) -> None:
    rendered = Rendered(subject=subject, text=text, html=f"<p>{text}</p>\n")
    try:
        expected = build_message(rendered, **headers(to_name=name))  # type: ignore[arg-type]
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            message_bytes(rendered, **headers(to_name=name))  # type: ignore[arg-type]
        assert str(caught.value) == str(exc)
        return
    del expected
    fast, slow = both(rendered, **headers(to_name=name))
    assert fast == slow
