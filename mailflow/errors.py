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
