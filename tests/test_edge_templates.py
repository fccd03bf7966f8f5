"""Runaway templates (issue 12): a render has a budget of steps, time and size.

Before: a template with runaway loops made `templates check` and `serve` hang, and `serve`
ignored SIGTERM (it checks templates on its main thread). Now `templates check` names the
file and line (`render budget exceeded`), `serve` refuses to start with such a template,
keeps the last good set when one is edited in while it runs, and stops on SIGTERM.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from clitools import VENV_BIN
from conftest import free_port, now_args
from test_e2e_week import Serve, wait_port

from mailflow import compose
from mailflow.compose import Templates

RUNAWAY = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "loops over a string": '{% set s = "abcdefghij" * 1000 %}'
    "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "output bomb": '{% for i in range(100000) %}{{ "x" * 1000 }}{% endfor %}',
    "doubling": '{% set ns = namespace(s="x") %}{% for i in range(40) %}'
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "repetition": '{{ "x" * 10**9 }}',
    "width": '{{ "x"|center(1000000000) }}',
    "method": '{{ "y".ljust(10**9) }}',
}


def check(tmp_path: Path, body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    tpl = tmp_path / "tpl"
    tpl.mkdir(exist_ok=True)
    (tpl / "checkin.txt.j2").write_text("Hello {{ member.name }}\n" + body + "\n")
    config = tmp_path / "mailflow.toml"
    config.write_text(f'[service]\ndata_dir = "data"\n[templates]\ndir = "{tpl}"\n')
    return subprocess.run(
        [str(VENV_BIN / "mailflow"), *now_args(), "--config", str(config), "templates", "check"],
        capture_output=True,
        text=True,
        timeout=timeout,  # before: never returned
        check=False,
    )


@pytest.mark.parametrize("kind", sorted(RUNAWAY))
def test_templates_check_reports_a_runaway_template_with_file_and_line(
    tmp_path: Path, kind: str
) -> None:
    result = check(tmp_path, RUNAWAY[kind])
    assert result.returncode == 1, result
    said = result.stdout + result.stderr
    assert f"{tmp_path / 'tpl' / 'checkin.txt.j2'}:" in said
    assert "render budget exceeded" in said, said
    assert "Traceback" not in said
    if kind not in ("output bomb",):  # the output is measured outside the template
        assert f"{tmp_path / 'tpl' / 'checkin.txt.j2'}:2:" in said, said


def test_the_budget_leaves_real_templates_alone() -> None:
    templates = Templates()
    assert templates.check() == []
    rendered = templates.preview("digest", setback=True)
    assert rendered.subject and len(rendered.html) < compose.RENDER_CHARS


def test_serve_refuses_a_runaway_template_and_stops_on_sigterm_with_one_edited_in(
    tmp_path: Path,
) -> None:
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    port = free_port()
    config = tmp_path / "mailflow.toml"
    config.write_text(
        f'[service]\ndata_dir = "data"\n[listener]\nport = {port}\n'
        f'[schedule]\ntick_seconds = 1\n[templates]\ndir = "{tpl}"\n'
    )
    runaway = "Hello\n" + RUNAWAY["nested loops"] + "\n"
    # 1. With a runaway template serve does not start (and does not hang trying).
    (tpl / "checkin.txt.j2").write_text(runaway)
    proc = subprocess.run(
        [str(VENV_BIN / "mailflow"), *now_args(), "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "render budget exceeded" in proc.stderr, proc.stderr
    # 2. Started with good templates, one is edited into a runaway while it runs: the last
    # good set stays, and SIGTERM still stops it.
    (tpl / "checkin.txt.j2").unlink()
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(port)
        (tpl / "checkin.txt.j2").write_text(runaway)
        log = tmp_path / "serve.log"
        deadline = time.monotonic() + 30
        while "render budget exceeded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "template not used (last good version stays)" in log.read_text()
    finally:
        serve.stop()  # SIGTERM; fails if it takes more than 15 s
    assert serve.proc.returncode == 0
