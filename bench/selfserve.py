"""Self-service: `partner for SKILL` mails through intake, beside check-in replies, in-process.

Usage: ``.venv/bin/python bench/selfserve.py [--n 200] [--partnerships 2000]``

A directory of 2 x `--partnerships` people (every partner offers public speaking) and that
many running partnerships. Ours: `--n` mails to the program's address (`partner for public
speaking` from members) are spooled and taken in by one `App.ingest`: each reads the
directory in a core transaction, runs the eligibility rule with the cap, writes a request and
renders and queues the suggestions mail. Raw: `--n` member replies to their check-ins (the
common case, a report stored and nothing sent) spooled and taken in the same way, in the same
run. Mail goes to .eml files (no relay).

Last line on stdout: ``selfserve: ours X/s, raw Y/s, ratio Z``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--partnerships", type=int, default=2000)
    args = parser.parse_args()
    os.environ["MAILFLOW_SECRET"] = c.SECRET
    from dataclasses import replace

    from mailflow.app import build
    from mailflow.config import load

    root = c.workdir("selfserve")
    now = c.now_in_period()
    population = c.populate(root / "data", args.partnerships, now)
    config = load(c.write_config(root), os.environ)
    app = build(config)
    with app.store.core_tx() as core:
        for person in core.people():
            if person.email.startswith("partner"):
                core.put_person(replace(person, offers=("public speaking",)))
    program = config.program.address_for(config.service.domain)

    def spool(messages: list[tuple[str, str, bytes]]) -> None:
        for mail_from, rcpt, raw in messages:
            app.spool.put(raw, mail_from=mail_from, rcpt_tos=[rcpt], peer="bench", received_at=now)

    asks = []
    for i in range(args.n):
        msg = EmailMessage()
        msg["From"] = c.member_of(i)
        msg["To"] = program
        msg["Subject"] = "partner"
        msg["Message-ID"] = f"<ask.{i}.{time.time_ns()}@people.example.com>"
        msg.set_content("partner for Public Speaking\n")
        asks.append((c.member_of(i), program, msg.as_bytes()))
    replies = [
        c.reply_message(i, i % args.partnerships + 1, population.period, now) for i in range(args.n)
    ]

    spool(asks)
    start = time.perf_counter()
    app.ingest(now)
    ours = args.n / (time.perf_counter() - start)
    suggestions = len(app.outbox.pending())
    spool(replies)
    start = time.perf_counter()
    app.ingest(now)
    raw = args.n / (time.perf_counter() - start)
    c.progress(f"{suggestions} suggestions mails queued")
    print(c.result_line("selfserve", ours, raw))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
