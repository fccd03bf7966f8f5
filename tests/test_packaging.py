"""A wheel built from pyproject.toml (not the checkout) is what `pip install .` installs: it
builds without setuptools warnings, carries the admin site's pages and files and the mail
templates, and an installed copy serves the site and passes `templates check`.

Built offline with the venv's own setuptools (`--no-build-isolation`), from a copy of the
sources under tmp_path (so the checkout gets no build/ folder); installed with `--target`
into a fresh venv whose only other path is this venv's site-packages (for the dependencies).
"""

from __future__ import annotations

import http.client
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import die_with_parent, free_port, now_args

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)


def _build_wheel(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mailflow", "templates"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path / "dist"
    done = subprocess.run(
        [str(PYTHON), "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    [wheel] = out.glob("mailflow-*.whl")
    return wheel, log


@pytest.mark.timeout(300)
def test_the_wheel_builds_without_warnings_and_an_install_serves_the_site(
    tmp_path: Path,
) -> None:
    wheel, log = _build_wheel(tmp_path)
    for sign in ("_Warning", "would be ignored", "BuildBackendWarning", "DeprecationWarning"):
        assert sign not in log, [line for line in log.splitlines() if sign in line]
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"mailflow/web_static/{p.name}" for p in (ROOT / "mailflow/web_static").iterdir()}
    wanted |= {
        f"mailflow/web_templates/{p.name}" for p in (ROOT / "mailflow/web_templates").glob("*.html")
    }  # noqa: E501
    wanted |= {f"mailflow/mail_templates/{p.name}" for p in (ROOT / "templates").glob("*.j2")}
    assert wanted - names == set()

    # A fresh venv with the wheel installed (not editable): the sources are not on its path.
    venv = tmp_path / "venv"
    subprocess.run([str(PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    (Path(target) / "deps.pth").write_text(site.getsitepackages()[0] + "\n", encoding="utf-8")
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
         target, str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    web_port = free_port()
    (run / "mailflow.toml").write_text(
        f'[service]\ndata_dir = "data"\n[listener]\nport = {free_port()}\n'
        f"[web]\nport = {web_port}\n",
        encoding="utf-8",
    )
    base = [str(python), "-m", "mailflow", "--config", "mailflow.toml", *now_args()]
    where = subprocess.run(
        [str(python), "-c", "import mailflow.compose as c; print(c.SHIPPED_DIR)"],
        capture_output=True, text=True, check=True, timeout=30, cwd=run,
    ).stdout.strip()  # fmt: skip
    assert where == str(Path(target) / "mailflow" / "mail_templates")
    checked = subprocess.run(
        [*base, "templates", "check"], capture_output=True, text=True, timeout=60, cwd=run
    )
    assert (checked.returncode, checked.stdout) == (0, "templates ok\n"), checked.stderr
    proc = subprocess.Popen(
        [*base, "web"], cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        pages = {}
        deadline = time.monotonic() + 60
        for path in ("/signin", "/static/app.css", "/static/app.js"):
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    pages[path] = (resp.status, resp.read().decode("utf-8", "replace"))
                    conn.close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the installed site never answered"
                    time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert pages["/signin"][0] == 200 and "/static/app.css" in pages["/signin"][1]
    css = (ROOT / "mailflow/web_static/app.css").read_text(encoding="utf-8")
    assert pages["/static/app.css"] == (200, css)
    assert pages["/static/app.js"][0] == 200
