"""The MIME message: a rendered mail (`Rendered`) as bytes on the wire, every header line
written by us.

`build_message` builds a `multipart/alternative` EmailMessage (text, then HTML) with the
email package; `message_bytes` writes the very same bytes directly, because a fan-out builds
thousands of messages and the email package's MIME objects cost more than rendering the
templates. Both take their header lines from one source (`_header_lines`), and a test holds
the two byte-identical.

Header lines are ours, never folded by the email package. On this Python (3.11.7,
CVE-2024-6923) its folder parses a display name or subject, *decodes* any RFC 2047 encoded
word it finds, and writes the decoded text, CR/LF included: a person's name
`=?utf-8?q?Julie=0D=0AReply-To=3A...?=` (possible through an HR CSV import) became a real
`Reply-To:` header. Patched Pythons raise instead; neither is acceptable for mail we build
from stored text. So:
- every value is checked first (control characters and Unicode line breaks refused);
- plain ASCII text (printable, single spaces, short words, no `=?`) is written as is and
  folded at spaces to 78 columns;
- anything else, including text that merely *looks* like an encoded word, is written as a
  run of our own `=?utf-8?b?...?=` words. A reader decodes them once and gets exactly the
  text we were given: an encoded word in a name is shown literally, never decoded into
  header syntax;
- `check_header_block` checks the final text of every header section as it goes out:
  ASCII, CRLF only, no line over 998, and exactly the header names we set, in order. Even a
  mistake here cannot put a header on the wire that we did not mean to write.
Input fields refuse encoded-word syntax too (`people.check_text` uses `has_encoded_word`).

International addresses (RFC 6532): an address that is not ASCII is written in its Unicode
form, raw UTF-8 in the From, To or Reply-To line (the only place a header may leave ASCII;
names and subjects stay encoded words, which RFC 6532 readers read too). Such a message
needs SMTPUTF8; `downgrade` gives its ASCII form for a relay that does not offer it (IDN
domains as A-labels), or None when an address has no ASCII form (a non-ASCII local part).
"""

from __future__ import annotations

import base64
import email.policy
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from mailflow.addresses import ascii_domain, ascii_form


@dataclass(frozen=True)
class Rendered:
    """One rendered mail: a one-line subject, the plain-text body and the HTML body."""

    subject: str
    text: str
    html: str


# -- header lines ---------------------------------------------------------------------------

MAX_LINE = 78  # RFC 5322's "SHOULD", and what the email package folds to
HARD_LIMIT = 998  # RFC 5322's "MUST"

# Anything shaped like an RFC 2047 encoded word (loosely: "=?" ... "?="). Input fields refuse
# it, and header text that contains it is always re-encoded by us.
_ENCODED_WORD = re.compile(r"=\?.*?\?=", re.DOTALL)
# Printable ASCII words separated by single spaces.
_PLAIN_TEXT = re.compile(r"^[\x21-\x7e]+(?: [\x21-\x7e]+)*$")
# A display name that needs no quoting: atext words (RFC 5322 3.2.3).
_ATEXT_WORDS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_BREAKS = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_NAME = re.compile(r"^([\x21-\x39\x3b-\x7e]+):")
_LONGEST_PLAIN_WORD = 60  # longer words go encoded (encoded words can be split, words can't)
_LONGEST_QUOTED = 60
# 75 characters per encoded word (RFC 2047 2): "=?utf-8?b?" + 60 base64 characters + "?=".
_BYTES_PER_WORD = 45


def has_encoded_word(text: str) -> bool:
    """True when `text` contains something shaped like an RFC 2047 encoded word."""
    return _ENCODED_WORD.search(text) is not None


def _normalise(text: str) -> str:
    # Header text is one line of single spaces; folding and unfolding would not keep more.
    return " ".join(text.split())


def encoded_words(text: str, first_room: int = MAX_LINE) -> list[str]:
    """`text` as `=?utf-8?b?...?=` words of at most 75 characters, never splitting a
    character; decoded together they give back exactly `text`.

    `first_room`: the columns left on the line the first word goes on, so that it fits
    there (a value that starts on a continuation line reads back with a leading space).
    """
    words: list[str] = []
    chunk = b""
    limit = max(3, min(_BYTES_PER_WORD, (first_room - len(_b_word(b""))) // 4 * 3))
    for ch in text:
        data = ch.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError (a ValueError)
        if len(chunk) + len(data) > limit:
            words.append(_b_word(chunk))
            chunk = b""
            limit = _BYTES_PER_WORD
        chunk += data
    if chunk:
        words.append(_b_word(chunk))
    return words


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def text_tokens(text: str, first_room: int = MAX_LINE) -> list[str]:
    """An unstructured value (Subject) as tokens to be joined by folding white space."""
    text = _normalise(text)
    if not text:
        return []
    words = text.split(" ")
    if (
        _PLAIN_TEXT.match(text)
        and not has_encoded_word(text)
        and all(len(w) <= _LONGEST_PLAIN_WORD for w in words)
    ):
        return words
    return encoded_words(text, first_room)


def unstructured(name: str, text: str) -> str:
    """`Name: text`, folded; see the module docstring."""
    return fold(name, text_tokens(text, MAX_LINE - len(name) - 2))


def phrase_tokens(name: str) -> list[str]:
    """A display name as tokens: atext words, one quoted string, or encoded words."""
    name = _normalise(name)
    if not name:
        return []
    if has_encoded_word(name) or not _PLAIN_TEXT.match(name):
        return encoded_words(name)
    if _ATEXT_WORDS.match(name) and all(len(w) <= _LONGEST_PLAIN_WORD for w in name.split()):
        return name.split(" ")
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if len(quoted) <= _LONGEST_QUOTED:
        return [quoted]
    return encoded_words(name)


def address_tokens(addr_spec: str, display_name: str) -> list[str]:
    """`Name <addr>` (or the bare address) as tokens; addr_spec must be checked (ASCII, or
    the Unicode form of an international address: RFC 6532)."""
    if _BREAKS.search(addr_spec) or _HEADER_BREAKERS.search(addr_spec) or " " in addr_spec:
        raise ValueError(f"not an address: {addr_spec!r}")
    phrase = phrase_tokens(display_name)
    return [*phrase, f"<{addr_spec}>"] if phrase else [addr_spec]


def fold(name: str, tokens: Sequence[str]) -> str:
    """`Name: tok tok ...` folded before a token wherever a line would pass 78 columns.

    A token that fits no line whole (a long Message-ID) stays on one longer line, as the
    email package does; `check_header_block` refuses any line over 998.
    """
    head = f"{name}:"
    lines: list[str] = []
    current = head
    for token in tokens:
        if len(current) + 1 + len(token) <= MAX_LINE:
            current += " " + token
        elif current == head and len(token) + 1 > MAX_LINE:
            current += " " + token  # too long for any line: keep it after the name
        else:
            lines.append(current)
            current = " " + token
    lines.append(current)
    return "\r\n".join(lines)


# The header fields that may carry UTF-8 (an international address, RFC 6532).
UTF8_FIELDS = frozenset({"from", "to", "reply-to"})


def check_header_block(block: str, names: Sequence[str]) -> None:
    """ValueError unless `block` is exactly the header lines `names`, in order.

    `block` is a header section as it goes on the wire ("Name: value\\r\\n" lines, folded
    lines starting with a space or tab). This is the last word: whatever built the text,
    no input can add a header line, split one, or smuggle a line break. Text that is not
    ASCII is allowed only in an address field (`UTF8_FIELDS`).
    """
    if not block.endswith("\r\n"):
        raise ValueError("header: the header section must end with CRLF")
    lines = block[:-2].split("\r\n")
    found: list[str] = []
    for line in lines:
        if "\r" in line or "\n" in line or "\0" in line:
            raise ValueError("header: a bare CR, LF or NUL in a header line")
        if len(line) > HARD_LIMIT:
            raise ValueError(f"header: a line of {len(line)} characters (at most {HARD_LIMIT})")
        if line[:1] in (" ", "\t"):
            if not found or not line.strip():
                raise ValueError("header: a folded line without a header, or a blank one")
        else:
            match = _FIELD_NAME.match(line)
            if match is None:
                raise ValueError(f"header: not a header line: {line[:40]!r}")
            found.append(match.group(1))
        if not line.isascii() and found[-1].lower() not in UTF8_FIELDS:
            raise ValueError(f"header: non-ASCII text in {found[-1]}")
    if [n.lower() for n in found] != [n.lower() for n in names]:
        raise ValueError(f"header: wrote {found}, expected {list(names)}")


class Folded(str):
    """A header the email package must copy as we folded it, never refold.

    Assigning an object with `name` and `fold()` to an `EmailMessage` is how the email
    package stores its own header objects; on output it calls `fold(policy=...)` and writes
    what it gets. The str value is the unfolded header text, as a plain parser would read it.
    """

    name: str
    folded: str

    def __new__(cls, line: str) -> Folded:
        name, _, rest = line.partition(":")
        self = super().__new__(cls, rest.replace("\r\n", "").strip())
        self.name = name
        self.folded = line
        return self

    def fold(self, *, policy: Any) -> str:
        return self.folded.replace("\r\n", policy.linesep) + policy.linesep


# -- the message -----------------------------------------------------------------------------

_POLICY = email.policy.SMTP
_POLICY_UTF8 = email.policy.SMTPUTF8  # headers with an international address (RFC 6532)


# Unicode categories Cc, Zl and Zp: control characters and line/paragraph separators.
_HEADER_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_header_value(field: str, value: str) -> str:
    """Refuse control characters (CR, LF, NUL, ...) and Unicode line breaks in a header value."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    found = _HEADER_BREAKERS.search(value)
    if found is not None:
        raise ValueError(f"{field}: control character {found.group()!r} not allowed in a header")
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


# A plain dot-atom address needs none of the header registry's parsing (which costs about
# as much as the rest of a fan-out message's headers); anything else is checked thoroughly.
_PLAIN_ADDR = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$"
)


def plain_address(addr_spec: str) -> bool:
    """True for a plain ASCII dot-atom address (`local@domain`): no quoting, no display
    name, nothing a parser could read two ways."""
    return _PLAIN_ADDR.match(addr_spec) is not None


_UTF8_LOCAL = re.compile(
    r"^(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+(?:\.(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+)*$"
)


def _address_tokens(field: str, addr_spec: str, display_name: str) -> list[str]:
    if _PLAIN_ADDR.match(addr_spec):
        _check_header_value(field, display_name)
        return address_tokens(addr_spec, display_name)
    if not addr_spec.isascii():
        # An international address is written in its Unicode form (RFC 6532: atext plus
        # any non-ASCII character); `downgrade` gives its A-labels for a relay without
        # SMTPUTF8. The header registry refuses a non-ASCII local part, so it is checked here.
        _check_header_value(field, addr_spec)
        _check_header_value(field, display_name)
        local, _, domain = addr_spec.rpartition("@")
        a_domain = ascii_domain(domain)
        domain_ok = a_domain is not None and _PLAIN_ADDR.match(f"x@{a_domain}")
        if not _UTF8_LOCAL.match(local) or not domain_ok:
            raise ValueError(f"{field}: invalid address {addr_spec!r}")
        return address_tokens(addr_spec, display_name)
    address = _address(field, addr_spec, display_name)
    return address_tokens(address.addr_spec, display_name)


def _header_lines(
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
    check: bool = True,
) -> list[str]:
    """Our header lines, folded, in order: the one source for both message paths.

    Every value is checked (control characters refused) and written by the functions above, never
    folded by the email package (see py: CVE-2024-6923). `check=False` leaves the check of the
    whole block to a caller that checks it with more lines after these (`message_bytes`).
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("Date: a timezone-aware datetime is required")
    subject = _check_header_value("Subject", rendered.subject)
    lines = [
        fold("From", _address_tokens("From", from_address, from_name)),
        fold("To", _address_tokens("To", to_address, to_name)),
        unstructured("Subject", subject),
        fold("Date", [format_datetime(date)]),
        fold("Message-ID", [_check_msg_id("Message-ID", message_id)]),
    ]
    if reply_to is not None:
        lines.append(fold("Reply-To", _address_tokens("Reply-To", reply_to, "")))
    if in_reply_to is not None:
        lines.append(fold("In-Reply-To", [_check_msg_id("In-Reply-To", in_reply_to)]))
    refs = [_check_msg_id("References", ref) for ref in references]
    if refs:
        lines.append(fold("References", refs))
    lines += [
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0",
    ]
    if check:
        check_header_block("\r\n".join(lines) + "\r\n", [_name(line) for line in lines])
    return lines


def _name(line: str) -> str:
    return line.split(":", 1)[0]


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
    or another control character raises :class:`ValueError`; the header lines are written by
    the functions above and copied as they are, so no value can add a header line.
    The message uses :data:`email.policy.SMTP` (CRLF line ends).
    """
    lines = _header_lines(
        rendered,
        from_address=from_address,
        from_name=from_name,
        to_address=to_address,
        to_name=to_name,
        message_id=message_id,
        date=date,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=references,
    )
    utf8 = not all(line.isascii() for line in lines)
    msg = EmailMessage(policy=_POLICY_UTF8 if utf8 else _POLICY)
    for line in lines:
        msg[_name(line)] = Folded(line)
    # quoted-printable: 7-bit safe for any relay, and no body line can exceed SMTP's limit.
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


_PART_HEAD = (
    'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n"
)


QP_MEMO_LINES = 4096  # a memo of encoded lines is emptied when it holds this many


def _qp_body(text: str, memo: dict[bytes, str] | None = None) -> str:
    # Exactly what EmailMessage.set_content(cte="quoted-printable") stores (see
    # email.contentmanager._encode_text), with the generator's CRLF line ends.
    lines = text.encode("utf-8").splitlines()
    if memo is not None and lines:
        # Quoted-printable encodes each line on its own (the body's line breaks stay hard
        # breaks), so a line is encoded once per memo: a fan-out's template lines that do
        # not depend on the person (most of the HTML) are encoded for the first message only.
        out = []
        for line in lines:
            encoded = memo.get(line)
            if encoded is None:
                if len(memo) >= QP_MEMO_LINES:
                    memo.clear()
                encoded = memo[line] = _qp_lines([line])
            out.append(encoded)
        return "".join(out)
    return _qp_lines(lines)


def _qp_lines(lines: list[bytes]) -> str:
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
    qp_memo: dict[bytes, str] | None = None,
) -> bytes:
    """The wire bytes (CRLF) of :func:`build_message`'s message, the same checks and output.

    A fan-out builds thousands of messages, and the email package's MIME objects cost more
    than rendering the templates: the bytes are written directly, from the same header lines
    (:func:`_header_lines`) and in the form the email package writes the body. The whole
    header section is checked once more as it goes out (exactly our headers, nothing else).
    `qp_memo` (line -> its encoded form), kept by the caller across messages, makes the body
    lines that repeat from message to message cost one look-up each.
    """
    lines = _header_lines(
        rendered,
        from_address=from_address,
        from_name=from_name,
        to_address=to_address,
        to_name=to_name,
        message_id=message_id,
        date=date,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=references,
        check=False,  # the whole header section is checked below, Content-Type included
    )
    text = _PART_HEAD.format(subtype="plain") + "\r\n" + _qp_body(rendered.text, qp_memo)
    html = (
        _PART_HEAD.format(subtype="html")
        + "MIME-Version: 1.0\r\n\r\n"
        + _qp_body(rendered.html, qp_memo)
    )
    boundary = _boundary(text + "\r\n" + html)
    head = "\r\n".join(lines) + (
        f'\r\nContent-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
    )
    check_header_block(head, [*(_name(line) for line in lines), "Content-Type"])
    out = head + f"\r\n--{boundary}\r\n{text}\r\n--{boundary}\r\n{html}\r\n--{boundary}--\r\n"
    return out.encode("utf-8")  # ASCII but for an international address (RFC 6532)


def needs_smtputf8(data: bytes) -> bool:
    """True when a message's header section is not ASCII (an international address): it
    may travel as it is only over SMTPUTF8 (the body is quoted-printable, always ASCII)."""
    end = data.find(b"\r\n\r\n")
    return not data[: end if end >= 0 else len(data)].isascii()


# An address in one of our address fields: `<spec>` or a bare spec.
_SPEC = re.compile(r"(?<![^\s<:,])<?([^\s<>,\"]+@[^\s<>,\"]+)>?")


def downgrade(data: bytes) -> bytes | None:
    """The message with every international address in its header lines in ASCII form (the
    domain as A-labels), for a relay without SMTPUTF8; None when one has no ASCII form (a
    non-ASCII local part) or the header section is not one of ours."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    try:
        head = data[: end + 2].decode("utf-8")
    except UnicodeDecodeError:
        return None
    out: list[str] = []
    failed = False

    def ascii_spec(match: re.Match[str]) -> str:
        nonlocal failed
        spec = match.group(1)
        converted = spec if spec.isascii() else ascii_form(spec)
        if converted is None:
            failed = True
            return match.group(0)
        return match.group(0).replace(spec, converted)

    for line in head.split("\r\n"):
        out.append(line if line.isascii() else _SPEC.sub(ascii_spec, line))
    new_head = "\r\n".join(out)
    if failed or not new_head.isascii():
        return None
    return new_head.encode("ascii") + data[end + 2 :]


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
