"""One clock, handed in at the edge (issue 9).

`main(argv, clock=..., environ=...)` hands its clock to every command; the global
`mailflow --now ISO8601` runs one-shot commands as of that instant and starts `serve`'s clock
there. Domain code never reads the wall clock or the environment: an `ast` walk holds that.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clitools import Mailflow, run_console
from conftest import die_with_parent, free_port
from smtp_recorder import RecordingSMTPServer

import mailflow
from mailflow.clock import fixed_clock, shifted_clock, system_clock
from mailflow.config import from_mapping

MAILFLOW = str(Path(sys.executable).parent / "mailflow")
PACKAGE = Path(mailflow.__file__).resolve().parent
# Far from any real date, so that a wall-clock read anywhere shows up as a wrong year.
WHEN = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)  # a Monday (2031-W10)


def no_wall_clock() -> datetime:
    raise AssertionError("the wall clock was read although --now was given")


def people(mf: Mailflow) -> None:
    mf.add_person("ada@example.com", "Eng")
    mf.add_person("grace@example.com", "Sales")


def add(mf: Mailflow, *extra: str) -> str:
    return mf.ok(
        "partnerships", "add", "--member", "ada@example.com", "--partner", "grace@example.com",
        "--skill", "sql", "--goal", "2031-06-30 Ship it", "--why", "w", "--saddle", "s", *extra,
    ).last_line  # fmt: skip


def show(mf: Mailflow, pid: str) -> dict:
    return json.loads(mf.ok("partnerships", "show", pid, "--json").out)


def test_main_hands_its_clock_to_every_command_that_records_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, now=WHEN)
    people(mf)
    pid = add(mf, "--accepted")
    doc = show(mf, pid)
    assert doc["created_at"] == WHEN.isoformat()
    assert doc["consent_at"] == WHEN.isoformat()
    assert doc["start"] == "2031-03-03"  # "today" for the member is the clock's day
    # pause --until must lie after the member's today, by the same clock.
    mf.bad("partnerships", "pause", pid, "--until", "2031-03-03")
    mf.ok("partnerships", "pause", pid, "--until", "2031-03-04")
    mf.ok("partnerships", "resume", pid)
    mf.now = WHEN + timedelta(days=2, hours=3)
    mf.ok("partnerships", "end", pid)
    assert show(mf, pid)["ended_at"] == (WHEN + timedelta(days=2, hours=3)).isoformat()


def test_global_now_runs_one_shot_commands_without_reading_the_clock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailflow.cli import main

    config = tmp_path / "mailflow.toml"
    config.write_text('[service]\ndata_dir = "data"\ntimezone = "Europe/Berlin"\n')

    def run(*args: str) -> str:
        capsys.readouterr()
        code = main(["--config", str(config), *args], clock=no_wall_clock, environ={})
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    # Without an offset, --now is read in the service's time zone (10:00 Berlin = 09:00 UTC).
    now = ["--now", "2031-03-03T10:00:00"]
    run(*now, "people", "add", "ada@example.com", "--name", "Ada", "--department", "Eng")
    run(*now, "people", "add", "grace@example.com", "--name", "G", "--department", "Sales")
    pid = run(
        *now, "partnerships", "add", "--member", "ada@example.com", "--partner",
        "grace@example.com", "--skill", "sql", "--goal", "2031-06-30 Ship it", "--why", "w",
        "--saddle", "s",
    ).strip().splitlines()[-1]  # fmt: skip
    doc = json.loads(run(*now, "partnerships", "show", pid, "--json"))
    assert doc["created_at"] == WHEN.isoformat()
    status = json.loads(run(*now, "status", "--json"))
    assert status["consent_pending"]  # the partner has not answered yet at that instant
    # The check-in waits for the partner's yes: at that instant nothing else is due.
    assert run(*now, "tick").strip() == "nothing due"


def test_bad_global_now_is_one_error_line(tmp_path: Path) -> None:
    result = run_console("--now", "next tuesday", "people", "list", cwd=tmp_path)
    assert result.code == 1
    assert result.err.startswith("error: --now: expected ISO 8601")
    assert len(result.err.strip().splitlines()) == 1


def test_clocks_fixed_and_shifted() -> None:
    assert fixed_clock(WHEN)() == WHEN
    with pytest.raises(ValueError, match="timezone-aware"):
        fixed_clock(datetime(2031, 3, 3, 9, 0))
    # Shifted: starts at the instant, then runs on with the system clock.
    clock = shifted_clock(WHEN)
    first = clock()
    assert WHEN <= first < WHEN + timedelta(seconds=30)
    assert clock() >= first
    assert shifted_clock(WHEN, lambda: WHEN - timedelta(days=900)).offset == timedelta(days=900)
    # A value: it crosses to serve's ingest process unchanged.
    assert pickle.loads(pickle.dumps(clock)) == clock
    assert pickle.loads(pickle.dumps(system_clock)) is system_clock


def test_serve_starts_its_clock_at_now_and_lets_it_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rehearsal: `serve --now` in 2031 sends the check-in due then, for 2031's period."""
    listen = free_port()
    with RecordingSMTPServer() as relay:
        mf = Mailflow(
            tmp_path,
            capsys,
            'domain = "hot.example.com"\n'
            f"[listener]\nport = {listen}\n"
            f'[relay]\nhost = "127.0.0.1"\nport = {relay.port}\ntimeout_seconds = 5\n'
            "[schedule]\ntick_seconds = 1\n",
            now=WHEN - timedelta(days=3),
        )
        people(mf)
        add(mf, "--accepted", "--start", "2031-03-03")
        relay.wait_for(2)  # the introductions
        relay.clear()
        proc = subprocess.Popen(
            [MAILFLOW, "--now", WHEN.isoformat(), "--config", str(mf.config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "serve.log").open("wb"),
            preexec_fn=die_with_parent,
        )
        try:
            [checkin] = relay.wait_for(1, timeout=20)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert checkin.rcpt_tos == ("ada@example.com",)
    assert "-2031w10-" in str(checkin.message["Reply-To"])
    assert " Mar 2031 09:0" in str(checkin.message["Date"])
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()


def test_a_missing_stamp_is_a_store_error_never_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, now=WHEN)
    people(mf)
    pid = add(mf, "--accepted")
    data = json.loads(mf.core_path.read_text())
    for doc in data["partnerships"].values():
        del doc["created_at"]
    mf.core_path.write_text(json.dumps(data))
    err = mf.bad("partnerships", "show", pid)
    assert f'partnership {pid}: missing "created_at"' in err


def test_secrets_come_from_the_environ_handed_to_load(tmp_path: Path) -> None:
    cfg = from_mapping(
        {"service": {"data_dir": str(tmp_path)}, "relay": {"password_env": "RELAY_PW"}},
        environ={"MAILFLOW_SECRET": "k" * 32, "RELAY_PW": "pw", "UNRELATED": "x"},
    )
    assert cfg.secret("MAILFLOW_SECRET") == "k" * 32
    assert cfg.secret("RELAY_PW") == "pw"
    assert "UNRELATED" not in cfg.secrets  # only what the config names is kept
    assert "pw" not in repr(cfg)
    assert from_mapping({}).secret("MAILFLOW_SECRET") is None  # no environ: nothing read


# -- the guard: who may read the clock and the environment -------------------------------------

CLOCK_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today")}
CLOCK_CALLS |= {("date", "today"), ("time", "time"), ("time", "time_ns")}
CLOCK_CALLS |= {("time", "localtime"), ("time", "gmtime")}


def _attribute_uses(tree: ast.AST) -> list[tuple[str, str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.append((node.value.id, node.attr, node.lineno))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            found.append((node.value.attr, node.attr, node.lineno))
    return found


def test_only_the_clock_module_reads_the_wall_clock() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "clock.py":
            continue
        for owner, attr, line in _attribute_uses(ast.parse(path.read_text())):
            if (owner, attr) in CLOCK_CALLS:
                offenders.append(f"{path.name}:{line}: {owner}.{attr}")
    assert offenders == []


def test_only_config_loading_and_the_cli_read_the_environment() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in ("cli.py", "config.py"):
            continue
        for owner, attr, line in _attribute_uses(ast.parse(path.read_text())):
            if (owner, attr) in {("os", "environ"), ("os", "getenv"), ("os", "environb")}:
                offenders.append(f"{path.name}:{line}: {owner}.{attr}")
    assert offenders == []
