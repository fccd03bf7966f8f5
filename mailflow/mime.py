"""The MIME message: a rendered mail (`Rendered`) as bytes on the wire.

`build_message` builds a `multipart/alternative` EmailMessage (text, then HTML) with the
email package; `message_bytes` writes the very same bytes directly when every header is a
plain ASCII line, because a fan-out builds thousands of messages and the email package's
header objects cost more than rendering the templates. A test holds the two byte-identical.
Header values are checked for control characters, so no header can be injected.
"""

from __future__ import annotations

import email.policy
import random
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime


@dataclass(frozen=True)
class Rendered:
    """One rendered mail: a one-line subject, the plain-text body and the HTML body."""

    subject: str
    text: str
    html: str


_POLICY = email.policy.SMTP


def _check_header_value(field: str, value: str) -> str:
    """Refuse control characters (CR, LF, NUL, ...) and Unicode line breaks in a header value."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise ValueError(f"{field}: control character {ch!r} not allowed in a header")
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
    or another control character raises :class:`ValueError`, so header injection is impossible.
    The message uses :data:`email.policy.SMTP` (CRLF line ends, folded headers).
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("Date: a timezone-aware datetime is required")
    subject = _check_header_value("Subject", rendered.subject)
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _address("From", from_address, from_name)
    msg["To"] = _address("To", to_address, to_name)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = _check_msg_id("Message-ID", message_id)
    if reply_to is not None:
        msg["Reply-To"] = _address("Reply-To", reply_to, "")
    if in_reply_to is not None:
        msg["In-Reply-To"] = _check_msg_id("In-Reply-To", in_reply_to)
    refs = [_check_msg_id("References", ref) for ref in references]
    if refs:
        msg["References"] = " ".join(refs)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["MIME-Version"] = "1.0"
    # quoted-printable: 7-bit safe for any relay, and no body line can exceed SMTP's limit.
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


# A header line the email package would write unchanged: ASCII, at most 78 characters, single
# spaces, nothing that looks like an RFC 2047 encoded word. Display names: atext words only
# (nothing to quote). Anything else takes build_message's general path.
_PLAIN_VALUE = re.compile(r"^[\x21-\x7e]+(?: [\x21-\x7e]+)*$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_PLAIN_ADDR = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$"
)
_PART_HEAD = (
    'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n"
)


def _plain_address(addr: str, name: str) -> str | None:
    if not _PLAIN_ADDR.match(addr) or (name and not _PLAIN_NAME.match(name)):
        return None
    return f"{name} <{addr}>" if name else addr


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

    A fan-out builds thousands of messages, and the email package's header objects cost more
    than rendering the templates. When every header is a plain ASCII line (the usual case)
    the bytes are written directly, in the form the email package writes them; otherwise
    (encoded names or subjects, long lines) build_message does it.
    """
    args = {
        "from_address": from_address,
        "from_name": from_name,
        "to_address": to_address,
        "to_name": to_name,
        "message_id": message_id,
        "date": date,
        "reply_to": reply_to,
        "in_reply_to": in_reply_to,
        "references": references,
    }
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("Date: a timezone-aware datetime is required")
    subject = _check_header_value("Subject", rendered.subject)
    # A plain ASCII address and name (the regexes admit no control characters) needs none
    # of the header registry's parsing; anything else is checked the thorough way.
    if _plain_address(from_address, from_name) is None:
        _address("From", from_address, from_name)
    if _plain_address(to_address, to_name) is None:
        _address("To", to_address, to_name)
    _check_msg_id("Message-ID", message_id)
    if reply_to is not None and _plain_address(reply_to, "") is None:
        _address("Reply-To", reply_to, "")
    if in_reply_to is not None:
        _check_msg_id("In-Reply-To", in_reply_to)
    refs = [_check_msg_id("References", ref) for ref in references]
    headers = [
        ("From", _plain_address(from_address, from_name)),
        ("To", _plain_address(to_address, to_name)),
        ("Subject", subject),
        ("Date", format_datetime(date)),
        ("Message-ID", message_id),
    ]
    if reply_to is not None:
        headers.append(("Reply-To", _plain_address(reply_to, "")))
    if in_reply_to is not None:
        headers.append(("In-Reply-To", in_reply_to))
    if refs:
        headers.append(("References", " ".join(refs)))
    lines = []
    for name, value in headers:
        line = f"{name}: {value}"
        if name == "Message-ID" and len(line) > 78 and _PLAIN_VALUE.match(value):
            # The email package moves an id that is too long for the first line onto a
            # continuation line when it fits there, and leaves it alone when not.
            lines.append(f"{name}:\r\n {value}" if len(value) < 78 else line)
            continue
        if value is None or len(line) > 78 or "=?" in value or not _PLAIN_VALUE.match(value):
            msg = build_message(rendered, **args)  # type: ignore[arg-type]
            return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        lines.append(line)
    text = _PART_HEAD.format(subtype="plain") + "\r\n" + _qp_body(rendered.text)
    html = _PART_HEAD.format(subtype="html") + "MIME-Version: 1.0\r\n\r\n" + _qp_body(rendered.html)
    boundary = _boundary(text + "\r\n" + html)
    out = "\r\n".join(lines) + (
        "\r\nAuto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
        f"\r\n--{boundary}\r\n{text}\r\n--{boundary}\r\n{html}\r\n--{boundary}--\r\n"
    )
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
