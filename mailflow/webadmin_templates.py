"""The admin site's template editor: check, preview, save, versions, rollback (part of `WebAdmin`).

An edit is tried by the code behind `mailflow templates check` on a scratch copy of the
templates dir that holds it (the exact set `serve` would load after a save), and every sample
variant is rendered from it. A save writes only what passes, each changed file atomically, and
is kept as a version (who, when, the full text) in data_dir/web/template_versions/NAME.jsonl.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from mailflow import samples
from mailflow.compose import (
    PARTS,
    SHIPPED_DIR,
    TEMPLATE_NAMES,
    Rendered,
    TemplateError,
    Templates,
)
from mailflow.config import Config, templates_override
from mailflow.errors import DomainError
from mailflow.outbox import write_atomic
from mailflow.store import fsync_dir
from mailflow.webadmin_numbers import stat_stamp

MAX_TEMPLATE_CHARS = 100_000
PART_LABELS = {"subject": "Subject", "txt": "Text", "html": "HTML"}
_PROBLEM = re.compile(r"^(?P<file>.+?\.j2)(?::(?P<line>\d+))?: (?P<message>.*)$", re.S)


@dataclass(frozen=True)
class Problem:
    """One `templates check` line, and where it points in the editor."""

    text: str  # exactly as `templates check` prints it
    message: str
    part: str | None  # subject / txt / html of the template being edited, else None
    line: int | None


@dataclass(frozen=True)
class Preview:
    label: str
    subject: str = ""
    text: str = ""
    html: str = ""
    error: str = ""


@dataclass(frozen=True)
class TryResult:
    problems: tuple[Problem, ...]
    previews: tuple[Preview, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Version:
    n: int
    at: datetime
    who: str
    action: str
    parts: dict[str, str]
    diff: str = ""


class TemplateDesk:
    """The template editor; a part of `WebAdmin`, which sets these attributes and provides
    `record` (the audit log) and `post` (mail through the outbox)."""

    config: Config
    state_dir: Path
    _check_cache: tuple[tuple[Any, ...], list[str]] | None

    @property
    def templates_dir(self) -> Path:
        return templates_override(self.config)

    def _versions_path(self, name: str) -> Path:
        return self.state_dir / "template_versions" / f"{name}.jsonl"

    def template_names(self) -> tuple[str, ...]:
        return TEMPLATE_NAMES

    def _require(self, name: str) -> None:
        if name not in TEMPLATE_NAMES:
            raise DomainError(f"unknown template {name!r}")

    def template_files(self, name: str) -> dict[str, Path]:
        """The file each part is read from now: yours (the templates dir) or the shipped one."""
        self._require(name)
        out = {}
        for part in PARTS:
            filename = f"{name}.{part}.j2"
            own = self.templates_dir / filename
            out[part] = own if own.is_file() else SHIPPED_DIR / filename
        return out

    def own_parts(self, name: str) -> list[str]:
        """The parts of `name` read from the templates dir (yours) rather than shipped."""
        return [p for p, path in self.template_files(name).items() if path.parent != SHIPPED_DIR]

    def template_source(self, name: str) -> dict[str, str]:
        return {
            part: path.read_text(encoding="utf-8")
            for part, path in self.template_files(name).items()
        }

    def templates_check(self) -> list[str]:
        """`mailflow templates check` on the files as they are (cached per files' stat)."""
        folder = self.templates_dir
        stamp = tuple((p.name, *stat_stamp(p)) for p in sorted(folder.rglob("*.j2")) if p.is_file())
        if self._check_cache is not None and self._check_cache[0] == stamp:
            return list(self._check_cache[1])
        problems = Templates(folder).check()
        self._check_cache = (stamp, problems)
        return list(problems)

    @contextmanager
    def _candidate(self, name: str, parts: Mapping[str, str]) -> Iterator[Path]:
        """A scratch copy of the templates dir with this template's parts as typed.

        `Templates` reads a directory, so trying an edit means a directory that holds it: the
        exact set `serve` would load after a save, checked by the same code. Under data_dir
        (same disk, and /tmp is slow in some sandboxes), removed afterwards.
        """
        scratch_root = self.state_dir / "tmp"
        scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="try-", dir=scratch_root))
        try:
            source = self.templates_dir
            for path in source.rglob("*.j2"):
                if path.is_file():
                    dest = scratch / path.relative_to(source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
            for part in PARTS:
                (scratch / f"{name}.{part}.j2").write_text(parts[part], encoding="utf-8")
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _clean_parts(self, name: str, parts: Mapping[str, str]) -> dict[str, str]:
        self._require(name)
        out = {}
        for part in PARTS:
            text = parts.get(part)
            if text is None:
                raise DomainError(f"{name}: the {PART_LABELS[part]} part is missing")
            if len(text) > MAX_TEMPLATE_CHARS:
                raise DomainError(f"{name}: the {PART_LABELS[part]} part is too long")
            # Browsers send a textarea's lines with CRLF; the files are LF, as shipped.
            out[part] = text.replace("\r\n", "\n").replace("\r", "\n")
        return out

    def template_try(self, name: str, parts: Mapping[str, str]) -> TryResult:
        """Check the templates as they would be with this edit, and render every variant."""
        parts = self._clean_parts(name, parts)
        with self._candidate(name, parts) as scratch:
            target = self.templates_dir
            raw = [_rebase(line, scratch, target) for line in Templates(scratch).check()]
            templates = Templates(scratch)
            previews = []
            for label, context in samples.variants(name):
                try:
                    r = templates.render(name, context)
                except TemplateError as exc:
                    previews.append(Preview(label, error=_rebase(str(exc), scratch, target)))
                    continue
                previews.append(Preview(label, r.subject, r.text, r.html))
        problems = tuple(_problem(line, name, self.templates_dir) for line in raw)
        return TryResult(problems, tuple(previews))

    def _versions(self, name: str) -> list[Version]:
        path = self._versions_path(name)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                d = json.loads(line)
                out.append(
                    Version(
                        int(d["n"]),
                        datetime.fromisoformat(d["at"]),
                        d["who"],
                        d["action"],
                        dict(d["parts"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: that save never reported done
        return out

    def _append_version(self, name: str, version: Version) -> None:
        path = self._versions_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "n": version.n,
            "at": version.at.isoformat(),
            "who": version.who,
            "action": version.action,
            "parts": version.parts,
        }
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def template_versions(self, name: str) -> list[Version]:
        """Every version, newest first, each with its diff against the one before."""
        self._require(name)
        found = self._versions(name)
        out = []
        previous: dict[str, str] | None = None
        for v in found:
            diff = ""
            if previous is not None:
                diff = "".join(
                    "".join(
                        difflib.unified_diff(
                            previous[part].splitlines(keepends=True),
                            v.parts[part].splitlines(keepends=True),
                            fromfile=f"v{v.n - 1}/{name}.{part}.j2",
                            tofile=f"v{v.n}/{name}.{part}.j2",
                            n=2,
                        )
                    )
                    for part in PARTS
                )
            out.append(Version(v.n, v.at, v.who, v.action, v.parts, diff))
            previous = v.parts
        out.reverse()
        return out

    def template_save(
        self, name: str, parts: Mapping[str, str], now: datetime, who: str, action: str = "saved"
    ) -> TryResult:
        """Save an edit if, and only if, the whole set passes `templates check` with it.

        Each changed file is replaced atomically (temp file, fsync, rename) in the templates
        dir; `serve` switches to the new set at its next tick, and only once it passes the
        check (it keeps the last good set), so a reader never gets a torn file. The save is a
        new version (who, when, the full text); the first save of a template also records
        what was there before, so there is always a version to roll back to.
        """
        parts = self._clean_parts(name, parts)
        result = self.template_try(name, parts)
        if not result.ok:
            return result
        lock = FileLock(str(self._versions_path(name)) + ".lock", timeout=30)
        self._versions_path(name).parent.mkdir(parents=True, exist_ok=True)
        with lock:
            current = self.template_source(name)
            versions = self._versions(name)
            n = versions[-1].n if versions else 0
            if not versions or versions[-1].parts != current:
                n += 1
                before = "as shipped" if not versions else "changed outside the admin site"
                self._append_version(name, Version(n, now, "(files)", before, current))
            folder = self.templates_dir
            changed = [part for part in PARTS if parts[part] != current[part]]
            for part in changed:
                write_atomic(folder / f"{name}.{part}.j2", parts[part].encode("utf-8"))
            if changed:
                fsync_dir(folder)
                n += 1
                self._append_version(name, Version(n, now, who, action, dict(parts)))
        if changed:
            files = ", ".join(f"{name}.{part}.j2" for part in changed)
            self.record(now, who, f"template {action}", name, f"version {n}: {files}")
        return result

    def template_rollback(self, name: str, n: int, now: datetime, who: str) -> TryResult:
        """Make version `n` the current one again (itself a new version, checked first)."""
        found = {v.n: v for v in self._versions(name)}
        if n not in found:
            raise DomainError(f"{name}: there is no version {n}")
        return self.template_save(name, found[n].parts, now, who, f"rolled back to version {n}")

    def template_send_test(
        self, name: str, parts: Mapping[str, str], variant: str, now: datetime, who: str
    ) -> str:
        """Mail the preview (the text as typed, on sample data) to the signed-in admin."""
        result = self.template_try(name, parts)
        if not result.ok:
            raise DomainError(
                "fix the problems first: a test goes out only for a template that passes the check"
            )
        chosen = next((p for p in result.previews if p.label == variant), result.previews[0])
        rendered = Rendered(f"[test] {chosen.subject}", chosen.text, chosen.html)
        key = f"template_test:{name}:{_short(who + now.isoformat())}"
        self.post(key, "template_test", who, rendered, now)
        self.record(now, who, "template test sent", name, f"variant {chosen.label} to {who}")
        return f"A test of {name} ({chosen.label}) is on its way to {who}."


def _short(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _rebase(line: str, scratch: Path, target: Path) -> str:
    """A problem found in the scratch copy, named by the file a save would write."""
    return line.replace(str(scratch), str(target))


def _problem(line: str, name: str, folder: Path) -> Problem:
    m = _PROBLEM.match(line)
    if m is None:
        return Problem(line, line, None, None)
    part = None
    for candidate in PARTS:
        if m.group("file") == str(folder / f"{name}.{candidate}.j2"):
            part = candidate
    number = int(m.group("line")) if m.group("line") else None
    return Problem(line, m.group("message"), part, number)
