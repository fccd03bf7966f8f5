"""Helpers for tests that drive the real CLI against a real data dir under tmp_path.

`Mailflow(tmp_path, capsys)` writes a config whose data_dir is tmp_path/data and runs
`mailflow.cli.main([...])` in-process; `bad(...)` runs a command that must be refused and
checks the error contract: `error:` lines only, the expected exit code, no traceback, no
internal error, and core.json and the people shards byte-for-byte unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import now_args

from mailflow.cli import main

VENV_BIN = Path(sys.executable).parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


class Mailflow:
    """Runs CLI commands with a config file in tmp_path; data lives in tmp_path/data."""

    def __init__(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        extra: str = "",
        now: datetime | None = None,
        environ: dict[str, str] | None = None,
        config: Path | None = None,
    ) -> None:
        # One clock for the whole test: every command runs as of `self.now` (settable), which
        # defaults to the wall clock when the test starts (shifted in CI's guard run).
        self.now = now or datetime.now(UTC)
        self.environ = {k: v for k, v in os.environ.items() if k != "MAILFLOW_CONFIG"}
        self.environ.update(environ or {})
        self.tmp_path = tmp_path
        self.capsys = capsys
        if config is None:  # else: an existing config (the conftest world's), data in tmp/data
            config = tmp_path / "mailflow.toml"
            config.write_text(f'[service]\ndata_dir = "data"\n{extra}', encoding="utf-8")
        self.config = config
        self.data_dir = tmp_path / "data"
        self.core_path = self.data_dir / "db" / "core.json"

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main(
            ["--config", str(self.config), *args], clock=lambda: self.now, environ=self.environ
        )
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str) -> Result:
        """Run a command that must succeed; stderr must hold no error line."""
        result = self(*args)
        assert result.code == 0, result
        assert "error:" not in result.err, result
        assert "Traceback" not in result.out + result.err
        return result

    def core_bytes(self) -> bytes | None:
        """core.json and the directory's shards, as one value to compare."""
        shards = sorted((self.data_dir / "db" / "people").glob("*.json"))
        files = [f for f in (self.core_path, *shards) if f.exists()]
        return b"\0".join(f.name.encode() + b"=" + f.read_bytes() for f in files) or None

    def bad(self, *args: str, code: int = 1, lines: int | None = 1) -> str:
        """Run a command that must be refused; returns stderr (all `error:` lines)."""
        before = self.core_bytes()
        result = self(*args)
        assert result.code == code, result
        err_lines = result.err.splitlines()
        assert err_lines, result
        assert all(line.startswith("error:") for line in err_lines), result.err
        if lines is not None:
            assert len(err_lines) == lines, result.err
        assert "Traceback" not in result.out + result.err
        assert "internal error" not in result.err, result.err
        assert self.core_bytes() == before, "the database changed"
        return result.err

    def add_person(self, email: str, dept: str, *extra: str) -> None:
        self.ok(
            "people",
            "add",
            email,
            "--name",
            email.split("@")[0].title(),
            "--department",
            dept,
            *extra,
        )


def run_console(
    *args: str, cwd: Path, env: dict[str, str] | None = None, now: datetime | None = None
) -> Result:
    """Run the installed `mailflow` console script (the real entry point) in a subprocess,
    as of `now` (default: the test's wall clock) through the global `--now`."""
    full_env = {k: v for k, v in os.environ.items() if k != "MAILFLOW_CONFIG"}
    full_env.update(env or {})
    proc = subprocess.run(
        [str(VENV_BIN / "mailflow"), *now_args(now), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
