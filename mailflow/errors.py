"""One error family: every problem a user can act on is a `MailflowError`.

`str()` of each is one line that says what to fix; the command line shows it as one `error:`
line and exits with `exit_code` (the click pattern: `ClickException.exit_code`). Anything else
that escapes is a bug, shown as "internal error" without a traceback.
"""

from __future__ import annotations

from typing import ClassVar


class MailflowError(Exception):
    """A problem the user can act on; str() is one line."""

    exit_code: ClassVar[int] = 1


class ConfigError(MailflowError):
    """A configuration problem; the message names the key."""


class DomainError(MailflowError):
    """Input that breaks a rule of the program (unknown person, bad date, same line, ...)."""


class NotFoundError(DomainError):
    """An id that names nothing (no such partnership, no such quarantined message): the admin
    site answers 404 for it, the command line exits 1 like any DomainError."""


class StoreError(MailflowError):
    """The data directory cannot be read or written, or holds a record of the wrong shape."""


class TemplateError(MailflowError):
    """A template could not be loaded, compiled or rendered.

    ``str(error)`` is a single line ``FILE:LINE: message`` (or ``FILE: message`` when no line
    applies, or just the message when no file does); whitespace in the message is collapsed.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = " ".join(str(message).split())
        self.file = file
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"

    def __str__(self) -> str:
        return self._format()


class StartupError(MailflowError):
    """A reason `serve` (or another long-running command) cannot start."""


class ListenerError(StartupError):
    """The SMTP listener cannot start (port taken, bad TLS files, inconsistent options)."""


class SpoolError(MailflowError):
    """A spool file could not be read back (it is quarantined with this reason)."""


class UsageProblem(MailflowError):
    """A command given values it cannot use (the CLI's own checks)."""


def one_line(message: str) -> str:
    """An error must stay one line even when it quotes a value with CR/LF in it."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class CorruptFileError(StoreError):
    """A database file that cannot be read as one (truncated, not JSON, a record of the wrong
    shape). It names the file, and only that file's data is unavailable: a caller that reads
    many files (a tick over several weeks) reports it and goes on with the others."""

    def __init__(self, path: object, message: str) -> None:
        super().__init__(one_line(f"{path}: {message}"))
        self.path = path


class DiskFullError(StoreError):
    """A write failed for lack of space (ENOSPC, EDQUOT). It passes by itself once space
    returns: retry later, never quarantine or give up because of it."""

    transient: ClassVar[bool] = True

    def __init__(self, path: object, message: str) -> None:
        super().__init__(one_line(f"{path}: {message}"))
        self.path = path


class StoreLockedError(StoreError):
    """A database file's lock was held by another process for longer than we wait. It
    passes by itself (the other writer finishes): retry later, never quarantine for it."""

    transient: ClassVar[bool] = True

    def __init__(self, path: object, message: str) -> None:
        super().__init__(one_line(f"{path}: {message}"))
        self.path = path


# errno values that mean "no room to write": they pass once space is freed.
_NO_SPACE = (28, 122)  # ENOSPC, EDQUOT (Linux)


def is_transient(exc: BaseException) -> bool:
    """True for a failure that passes by itself (disk full, a lock held too long): the work
    should stay where it is (spool, queue) and be retried, not quarantined or failed."""
    if getattr(exc, "transient", False):
        return True
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE
