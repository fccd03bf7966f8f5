"""Header lines of outgoing mail, written by us: no input can start a new header line.

Why not let the `email` package fold them: on this Python (3.11.7, CVE-2024-6923) its folder
parses a display name or subject, *decodes* any RFC 2047 encoded word it finds, and writes
the decoded text, CR/LF included. A person's name `=?utf-8?q?Julie=0D=0AReply-To=3A...?=`
(possible through an HR CSV import) thereby became a real `Reply-To:` header. Patched
Pythons raise instead; neither is acceptable for mail we build from stored text.

So every value is turned into header text here, and the email package only copies it:
- plain ASCII text (printable, single spaces, short words, no `=?`) is written as is and
  folded at spaces to 78 columns;
- anything else, including text that merely *looks* like an encoded word, is written as a
  run of our own `=?utf-8?b?...?=` words. A reader decodes them once and gets exactly the
  text we were given: an encoded word in a name is shown literally, never decoded into
  header syntax. Control characters are refused before this point (`compose`);
- `check_header_block` checks the final text of a whole header section: ASCII, CRLF only,
  no line over 998, and exactly the header names we set, in order. It runs on every message,
  so even a mistake here cannot put a header into the wire that we did not mean to write.

Pure functions; `compose` builds both its message paths from them, so they stay byte-equal.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

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
    """`Name <addr>` (or the bare address) as tokens; addr_spec must be checked ASCII."""
    if not addr_spec.isascii() or _BREAKS.search(addr_spec):
        raise ValueError(f"not an ASCII address: {addr_spec!r}")
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


def check_header_block(block: str, names: Sequence[str]) -> None:
    """ValueError unless `block` is exactly the header lines `names`, in order.

    `block` is a header section as it goes on the wire ("Name: value\\r\\n" lines, folded
    lines starting with a space or tab). This is the last word: whatever built the text,
    no input can add a header line, split one, or smuggle a line break.
    """
    if not block.isascii():
        raise ValueError("header: non-ASCII text in the header section")
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
            continue
        match = _FIELD_NAME.match(line)
        if match is None:
            raise ValueError(f"header: not a header line: {line[:40]!r}")
        found.append(match.group(1))
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
