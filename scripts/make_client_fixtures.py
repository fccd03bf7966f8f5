#!/usr/bin/env python3
"""Regenerate tests/fixtures/clients/: replies to a real check-in, composed by real mail clients.

usage: python3 scripts/make_client_fixtures.py [--checkin FILE.eml] [--out DIR] [--keep-work]

Needs the clients installed (Debian: ``apt-get install mutt s-nail``) and the project venv
(``make setup``); CI and the tests only read the committed files and need neither.

What it does:

1. Takes a real check-in: ``--checkin FILE`` or, by default, one made by mailflow itself
   (``people add`` x2, ``partnerships add --accepted``, ``tick --now 2026-11-30T09:00+01:00``
   with no relay, so the check-in lands in ``data_dir/outbox/`` as an .eml). It is copied to
   ``OUT/checkin.eml``.
2. Puts it in an mbox and has each client reply to it with its own defaults for quoting and
   attribution (mutt 2.x in a pseudo-terminal, driven by ``push``; s-nail in batch mode ``-#``
   with Debian's /etc/s-nail.rc, and once with s-nail's upstream default indentprefix, a tab).
   The client's ``editor`` is this script (``--edit STYLE FILE``), which writes the member's
   answer top-posted, bottom-posted or interleaved under the quoted questions; its
   ``sendmail`` / ``mta`` is this script too (``--capture FILE``), which saves the message the
   client would have sent.
3. Writes ``OUT/NAME.eml`` for each, and ``OUT/expected.json`` in the format of the shared
   real-mail cases (kind, setback, text_contains, text_excludes) plus ``sections_contain``.

Headers the clients write (User-Agent, Date, Message-ID, MIME, charset choice, format=flowed or
not) are kept as they are; only the Date and Message-ID change from one run to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
MEMBER = "Priya Nandakumar <priya@fernhill.example>"
SECRET = "client-fixtures-secret-0123456789abcdef"
CHECKIN_NOW = "2026-11-30T09:00:00+01:00"
FRIDAY_BEFORE = "2026-11-27T12:00:00+01:00"
SIGNATURE = "Priya Nandakumar\nPlatform Team, Fernhill Labs\n+49 30 5550 1234\n"

# What the member writes, per style. Each answer is (quoted question prefix, answer lines).
ANSWERS: dict[str, dict[str, object]] = {
    "mutt_top": {
        "style": "top",
        "text": (
            "Done: finished module 4 and recorded a practice run\n"
            "Setback: I didn\u2019t get to the Thursday rehearsal \u2013 a client call ran over\n"
            "Next: module 5 and two rehearsals before Friday\n"
        ),
    },
    "mutt_bottom": {
        "style": "bottom",
        "text": (
            "Done: module 4 is done, and I volunteered for the Friday demo\n"
            "Setback: none\n"
            "Next: rehearse the demo twice\n"
        ),
    },
    # Bottom-posted free text, hard-wrapped as she types it, one label, a setback in prose.
    "mutt_setback_bottom": {
        "style": "bottom",
        "text": (
            "Rough week, honestly. I missed both rehearsals: the quarterly close\n"
            "took every evening, and on Thursday I was too tired to go.\n"
            "\n"
            "I did finish module 4 on Sunday, so the course is still on track.\n"
            "\n"
            "Next week: book a room and rehearse the opening twice before Friday\n"
        ),
    },
    "mutt_interleaved": {
        "style": "interleaved",
        "answers": {
            "Done:": "Recorded the 5-minute talk and watched it back.",
            "Setback:": "Missed the Thursday rehearsal, the quarterly close ate the evening.",
            "Next:": "Book the slot on the team agenda.",
        },
    },
    "snail_top": {
        "style": "top",
        "text": (
            "Done: finished module 4 of the course in Z\u00fcrich\n"
            "Setback: nothing this week\n"
            "Next: module 5, and ask for a slot at the team meeting\n"
        ),
    },
    "snail_bottom": {
        "style": "bottom",
        "text": (
            "Good week overall: I finished module 4 and rehearsed my opening twice.\n"
            "The daily warm-ups slipped though, I only did two of five.\n"
            "\n"
            "Next week: module 5 and warm-ups every morning\n"
            "\n"
            "--\n"
            "Priya\n"
        ),
    },
    "snail_interleaved": {
        "style": "interleaved",
        "answers": {
            "Done:": "Finished module 4 and recorded myself, then watched it back.",
            "Setback:": "None.",
            "Next:": "Module 5.",
        },
    },
    "snail_tabquote_bottom": {
        "style": "bottom",
        "text": (
            "Done: watched my recording back and listed the filler words to cut\n"
            "Setback: skipped the Thursday rehearsal, the release went late\n"
            "Next: two rehearsals before Friday\n"
        ),
    },
}

QUOTED_CHECKIN = ["reply above this line", "Hi Priya", "Your goals", "what you did this week"]

EXPECTED: dict[str, dict[str, object]] = {
    "mutt_top": {
        "kind": "reply",
        "setback": True,
        "text_contains": [
            "finished module 4 and recorded a practice run",
            "get to the Thursday rehearsal",
            "module 5 and two rehearsals before Friday",
        ],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:", "Platform Team", "+49 30"],
        "sections_contain": {
            "done": "finished module 4",
            "setback": "Thursday rehearsal",
            "next": "module 5",
        },
    },
    "mutt_bottom": {
        "kind": "reply",
        "setback": False,
        "text_contains": ["module 4 is done", "rehearse the demo twice"],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:", "Platform Team", "+49 30"],
        "sections_contain": {"done": "module 4 is done", "setback": "none", "next": "rehearse"},
    },
    "mutt_setback_bottom": {
        "kind": "reply",
        "setback": True,
        "text_contains": [
            "I missed both rehearsals",
            "too tired to go",
            "I did finish module 4 on Sunday",
            "rehearse the opening twice before Friday",
        ],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:", "Platform Team", "+49 30"],
        "sections_contain": {"next": "rehearse the opening twice"},
    },
    "mutt_interleaved": {
        "kind": "reply",
        "setback": True,
        "text_contains": [
            "Recorded the 5-minute talk",
            "Missed the Thursday rehearsal",
            "Book the slot on the team agenda",
        ],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:", "Platform Team", "+49 30"],
        "sections_contain": {
            "done": "Recorded the 5-minute talk",
            "setback": "Missed the Thursday rehearsal",
            "next": "Book the slot",
        },
    },
    "snail_top": {
        "kind": "reply",
        "setback": False,
        "text_contains": ["finished module 4 of the course in Z\u00fcrich", "module 5"],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:"],
        "sections_contain": {"done": "Z\u00fcrich", "setback": "nothing", "next": "module 5"},
    },
    "snail_bottom": {
        "kind": "reply",
        "setback": True,
        "text_contains": [
            "I finished module 4 and rehearsed my opening twice",
            "warm-ups slipped",
            "module 5 and warm-ups every morning",
        ],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:", "--\nPriya"],
        "sections_contain": {"next": "module 5"},
    },
    "snail_interleaved": {
        "kind": "reply",
        "setback": False,
        "text_contains": ["Finished module 4 and recorded myself", "Module 5."],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:"],
        "sections_contain": {
            "done": "Finished module 4",
            "setback": "None",
            "next": "Module 5",
        },
    },
    "snail_tabquote_bottom": {
        "kind": "reply",
        "setback": True,
        "text_contains": [
            "watched my recording back",
            "skipped the Thursday rehearsal",
            "two rehearsals before Friday",
        ],
        "text_excludes": [*QUOTED_CHECKIN, "wrote:"],
        "sections_contain": {
            "done": "watched my recording back",
            "setback": "skipped the Thursday rehearsal",
            "next": "two rehearsals",
        },
    },
}


# ---------------------------------------------------------------------------------------------
# The two roles this script plays for the clients: editor and sendmail.
# ---------------------------------------------------------------------------------------------


def _is_quote(line: str) -> bool:
    return line.startswith((">", "\t"))


def edit(name: str, path: Path) -> None:
    """Write the member's answer into the client's draft, as she would in her editor."""
    spec = ANSWERS[name]
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    head: list[str] = []
    # With edit_headers (mutt) / editheaders (Debian's s-nail.rc) the draft starts with the
    # header section; the body starts after the first blank line.
    # (s-nail's draft has "# ..." comment lines among the headers).
    if lines and (lines[0].startswith("#") or re.match(r"[A-Za-z][A-Za-z0-9-]*: ", lines[0])):
        end = lines.index("") if "" in lines else len(lines)
        head, lines = lines[: end + 1], lines[end + 1 :]
    style = spec["style"]
    if style == "top":
        text = str(spec["text"]).rstrip("\n").split("\n")
        lines = [*text, "", *lines]
    elif style == "bottom":
        last = max(i for i, x in enumerate(lines) if _is_quote(x))
        text = str(spec["text"]).rstrip("\n").split("\n")
        lines = [*lines[: last + 1], "", *text, *lines[last + 1 :]]
    else:
        answers = dict(spec["answers"])  # type: ignore[call-overload]
        out: list[str] = []
        for line in lines:
            out.append(line)
            content = line.lstrip(">\t ").strip()
            for question, answer in answers.items():
                if _is_quote(line) and content.startswith(question):
                    out.extend(["", answer, ""])
                    answers.pop(question)
                    break
        lines = out
    path.write_text("\n".join([*head, *lines]), encoding="utf-8")


def capture(path: Path) -> None:
    """Save the message a client hands to its MTA (argv is the MTA's, ignored)."""
    path.write_bytes(sys.stdin.buffer.read())


# ---------------------------------------------------------------------------------------------
# Driving the clients
# ---------------------------------------------------------------------------------------------


def _wrapper(work: Path, name: str, *args: str, pass_args: bool) -> str:
    """A shell script in ``work`` that runs this script in one of its roles.

    Clients run ``editor`` / ``mta`` with their own arguments (the draft file; sendmail flags
    and recipients): the editor's are passed on, the MTA's dropped.
    """
    path = work / name
    tail = ' "$@"' if pass_args else ""
    quoted = " ".join(f"'{a}'" for a in (sys.executable, str(SELF), *args))
    path.write_text(f"#!/bin/sh\nexec {quoted}{tail}\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def make_checkin(work: Path) -> Path:
    """A check-in as mailflow sends it: the outbox .eml of a real `tick`."""
    mailflow = ROOT / ".venv" / "bin" / "mailflow"
    data = work / "data"
    config = work / "mailflow.toml"
    config.write_text(
        "[service]\n"
        'domain = "checkin.example.com"\n'
        'from_address = "mailflow@checkin.example.com"\n'
        f'data_dir = "{data}"\n'
        'timezone = "Europe/Berlin"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "MAILFLOW_CONFIG": str(config), "MAILFLOW_SECRET": SECRET}
    steps = [
        ["people", "add", "priya@fernhill.example", "--name", "Priya Nandakumar"]
        + ["--department", "Platform", "--timezone", "Europe/Berlin"],
        ["people", "add", "tomasz@fernhill.example", "--name", "Tomasz Wrona"]
        + ["--department", "Sales", "--timezone", "Europe/Berlin", "--offers", "public speaking"],
        ["partnerships", "add", "--member", "priya@fernhill.example"]
        + ["--partner", "tomasz@fernhill.example", "--skill", "public speaking"]
        + ["--goal", "2026-12-11 Finish the online course on structuring a talk (all 6 modules)."]
        + ["--goal", "2026-12-18 Give a 10-minute talk at the team meeting, without notes."]
        + ["--why", "I want to present my own team's work at the quarterly review."]
        + ["--saddle", "One bad week is data, not a verdict.", "--start", "2026-11-23"]
        + ["--accepted", "--allow-past"],
        ["tick", "--now", CHECKIN_NOW],
    ]
    for step in steps:
        # As of the Friday before the check-in: the partnership exists before its moment.
        args = ["--now", FRIDAY_BEFORE, *step] if step[0] != "tick" else step
        subprocess.run([str(mailflow), *args], env=env, check=True, capture_output=True)
    found = sorted((data / "outbox").glob("checkin_*.eml"))
    if not found:
        raise SystemExit("error: the tick made no check-in")
    return found[0]


def write_mbox(checkin: Path, mbox: Path) -> None:
    body = checkin.read_bytes().replace(b"\r\n", b"\n")
    lines = [b">" + x if x.startswith(b"From ") else x for x in body.split(b"\n")]
    mbox.write_bytes(
        b"From mailflow@checkin.example.com Mon Nov 30 08:00:00 2026\n"
        + b"\n".join(lines).rstrip(b"\n")
        + b"\n\n"
    )


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 30) -> None:
    """Run a curses program in a pseudo-terminal and drain its screen output until it exits."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvpe(argv[0], argv, env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    if not os.read(fd, 65536):
                        break
                except OSError:
                    break
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        else:
            os.kill(pid, signal.SIGKILL)
            raise SystemExit(f"error: {argv[0]} did not finish in {timeout} s")
    finally:
        os.close(fd)
    os.waitpid(pid, 0)


def run_mutt(name: str, mbox: Path, work: Path, out: Path) -> None:
    sig = work / "signature"
    sig.write_text(SIGNATURE, encoding="utf-8")
    muttrc = work / f"{name}.muttrc"
    editor = _wrapper(work, name + ".edit", "--edit", name, pass_args=True)
    mta = _wrapper(work, name + ".mta", "--capture", str(out), pass_args=False)
    # Only what non-interactive use needs (no prompts, no copies) plus the identity; quoting,
    # attribution, charsets and format stay mutt's defaults.
    muttrc.write_text(
        "\n".join(
            [
                'set realname="Priya Nandakumar"',
                "set from=priya@fernhill.example",
                "set use_from=yes",
                "set hostname=fernhill.example",
                f'set folder="{work}"',
                "set user_agent=yes",
                f'set signature="{sig}"',
                "set include=yes",
                "set reply_to=yes",
                "set fast_reply=yes",
                "set edit_headers=no",
                "set autoedit=no",
                "set copy=no",
                "set postpone=no",
                "set abort_unmodified=no",
                "set quit=yes",
                "set move=no",
                "set mbox_type=mbox",
                "set charset=utf-8",
                "set mark_old=no",
                "set sleep_time=0",
                f'set editor="{editor}"',
                f'set sendmail="{mta}"',
                'push "<reply><send-message><quit>"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "HOME": str(work),
        "TERM": "xterm",
        "TZ": "Europe/Berlin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    run_in_pty(["mutt", "-n", "-F", str(muttrc), "-f", str(mbox)], env)


def run_snail(name: str, mbox: Path, work: Path, out: Path, tab_quote: bool = False) -> None:
    env = {
        **os.environ,
        "HOME": str(work),
        "TZ": "Europe/Berlin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "EDITOR": _wrapper(work, name + ".edit", "--edit", name, pass_args=True),
    }
    argv = [
        "s-nail",
        "-#",
        "-S",
        "mta=" + _wrapper(work, name + ".mta", "--capture", str(out), pass_args=False),
        "-S",
        f"from={MEMBER}",
        "-S",
        "hostname=fernhill.example",
        "-S",
        "ttycharset=utf-8",
        "-S",
        "reply-to-honour=yes",
        "-f",
        str(mbox),
    ]
    if tab_quote:
        # s-nail's own default, which Debian's /etc/s-nail.rc changes to "> ".
        argv[2:2] = ["-S", "indentprefix=\t"]
    subprocess.run(
        argv, input=b"reply 1\n~e\n~.\nquit\n", env=env, check=True, capture_output=True, timeout=30
    )


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "--edit":
        edit(argv[1], Path(argv[2]))
        return 0
    if len(argv) >= 2 and argv[0] == "--capture":
        capture(Path(argv[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkin", type=Path, help="a check-in .eml (default: make one)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "clients")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    for program in ("mutt", "s-nail"):
        if shutil.which(program) is None:
            print(f"error: {program} is not installed (apt-get install mutt s-nail)")
            return 1
    scratch = ROOT / "bench" / ".work"  # git-ignored; /tmp is slow on this kind of machine
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="client-fixtures-", dir=scratch))
    try:
        checkin = args.checkin or make_checkin(work)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkin, args.out / "checkin.eml")
        mbox = work / "checkin.mbox"
        write_mbox(checkin, mbox)
        for name in ANSWERS:
            target = args.out / f"{name}.eml"
            target.unlink(missing_ok=True)
            if name.startswith("mutt_"):
                run_mutt(name, mbox, work, target)
            else:
                run_snail(name, mbox, work, target, tab_quote="tabquote" in name)
            if not target.exists() or not target.stat().st_size:
                print(f"error: {name}: the client sent nothing")
                return 1
            print(f"wrote {target}")
        expected = {f"{name}.eml": EXPECTED[name] for name in ANSWERS}
        (args.out / "expected.json").write_text(
            json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    finally:
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
