"""Address forms: one person, one address, however a mail system spells it.

An internationalised address has two spellings (RFC 5890-5891, RFC 6531/6532):
- the **Unicode form** (`jürgen@bücher.example`): what a person typed, what we store and
  show, and what goes on the wire over SMTPUTF8;
- the **ASCII form** (`kurt@xn--bcher-kva.example`): the domain as A-labels, for a relay
  that does not offer SMTPUTF8. Only an address whose local part is ASCII has one: a
  non-ASCII local part (`王芳@...`) can be delivered over SMTPUTF8 only.

`canonical` maps either spelling to the stored form, so a reply matches its person whichever
form the sender's client wrote. The IDNA conversion is the `idna` package's (UTS #46
mapping, as `email-validator` does it), never our own code. Pure: no I/O.
"""

from __future__ import annotations

import unicodedata

import idna

SMTPUTF8_NEEDED = "a non-ASCII local part can only be delivered over SMTPUTF8"


def split(address: str) -> tuple[str, str]:
    """(local part, domain) at the last "@"; the domain is "" when there is none."""
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def unicode_domain(domain: str) -> str:
    """The domain as U-labels (lower case, NFC); unchanged (lower-cased) if IDNA refuses it."""
    if not domain:
        return domain
    lowered = unicodedata.normalize("NFC", domain.lower())
    if lowered.isascii() and "xn--" not in lowered:
        return lowered
    try:
        return idna.decode(lowered, uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError):
        return lowered


def canonical(address: str) -> str:
    """The stored spelling of `address`: Unicode domain, lower case, NFC (as
    `people.normalize_email` stores it). A-labels and U-labels give the same result."""
    address = address.strip()
    local, domain = split(address)
    if not domain:
        return address.lower()
    return f"{unicodedata.normalize('NFC', local).lower()}@{unicode_domain(domain)}"


def ascii_domain(domain: str) -> str | None:
    """The domain as A-labels (`xn--...`), or None when IDNA refuses it."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def ascii_form(address: str) -> str | None:
    """`address` with its domain as A-labels, or None when it has no ASCII form (a
    non-ASCII local part, or a domain IDNA refuses)."""
    local, domain = split(address)
    if not local.isascii():
        return None
    converted = ascii_domain(domain)
    return None if converted is None else f"{local}@{converted}" if domain else local


def needs_smtputf8(address: str) -> bool:
    """True when `address` can travel only over SMTPUTF8 (its local part is not ASCII)."""
    return not split(address)[0].isascii()
