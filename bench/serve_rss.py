"""`serve`'s memory with a large directory: 50,000 people, 5,000 partnerships, one week.

Usage: ``.venv/bin/python bench/serve_rss.py [--people 50000] [--partnerships 5000]
[--replies 2000] [--site]``

The data is built the way an admin builds it: `people import` of an HR export (the directory
of `bench/admin.py`: 40 departments, a manager tree ten wide and five deep, four time zones)
and `partnerships import` of a program (two goals each, accepted, starting on the bench's
Monday with the check-in at 09:00 in each member's zone). Then `mailflow --now MONDAY 15:00
serve` runs, its outbox delivering to a do-nothing aiosmtpd relay (`bench/common.py sink`):

1. its first tick writes and sends every introduction and every check-in of the week;
2. `--replies` members reply (2-4 KB, quoted history) through 8 SMTP clients, each stored
   as a progress record;
3. a later tick (the schedule's tick every `--tick-seconds`, 20; the digest
   `--digest-minutes`, 1, after the latest reply) sends the partners' digests of those replies;
4. then `serve` idles for a while.

After each phase the VmRSS and VmHWM of the `serve` process are read from /proc; the last
lines print the peak (VmHWM over the whole run) and the steady RSS (VmRSS once idle after the
week's work). `--site` runs `serve` with the admin site on (an admin opens the dashboard
after the replies); by default the site is off as in the other mail-path benches. Nothing
here asserts a size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import admin  # noqa: E402
import common as c  # noqa: E402

# A Monday, 15:00 UTC: past 09:00 in all four zones of the directory (New York 10:00). The
# data is imported at 02:00 UTC, before the first check-in moment in every zone (Kolkata's
# 09:00 is 03:30 UTC): a partnership created after its week's moment is first asked a week on.
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
IMPORTED = datetime(2026, 11, 23, 2, 0, tzinfo=UTC).isoformat()
START = NOW.date().isoformat()


def program_pairs(n: int, k: int) -> list[tuple[str, str, str]]:
    """k (member, partner, skill): the last k people with one half the directory away.

    (`admin.pairs` looks for partners close by in the numbering, which runs dry for thousands
    of pairs: neighbours share a manager.) Each candidate is checked as `admin.pairs` does:
    different departments, no common manager below the root."""
    out: list[tuple[str, str, str]] = []
    for member in range(n - 1, 0, -1):
        if len(out) == k:
            return out
        partner = member - n // 2
        if partner <= 0 or admin.department_of(member) == admin.department_of(partner):
            continue
        chain: set[int] = set()
        j: int | None = member
        while j is not None:
            chain.add(j)
            j = admin.manager_of(j)
        j, crossed = partner, False
        while j is not None:
            crossed |= j in chain and j != 0
            j = admin.manager_of(j)
        if not crossed:
            out.append((admin.email(member), admin.email(partner), admin.SKILLS[len(out) % 4]))
    raise RuntimeError(f"only {len(out)} eligible pairs in a directory of {n}")


def write_program(path: Path, people: int, partnerships: int) -> list[tuple[str, str, str]]:
    triples = program_pairs(people, partnerships)
    rows = [",".join(("member", "partner", "skill", "goal_due", "goal", "why", "saddle",
                      "start", "checkin_day", "checkin_time", "accepted"))]  # fmt: skip
    for member, partner, skill in triples:
        first = (member, partner, skill, "2027-06-30", "Lead the design review",
                 "I want to lead reviews with confidence", "Book the room again next week",
                 START, "monday", "09:00", "yes")  # fmt: skip
        rows.append(",".join(first))
        rows.append(",".join((member, "", skill, "2027-09-30", "Give the all-hands talk")))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return triples


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def sent_by_kind(data: Path) -> dict[str, int]:
    """Outgoing records marked sent, by kind, over every period file."""
    out: dict[str, int] = {}
    for f in (data / "db" / "weeks").glob("*.json"):
        for doc in json.loads(f.read_bytes()).get("outgoing", {}).values():
            if doc.get("status") == "sent":
                out[doc["kind"]] = out.get(doc["kind"], 0) + 1
    return out


def wait_sent(data: Path, kind: str, n: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        got = sent_by_kind(data).get(kind, 0)
        if got >= n:
            return
        time.sleep(1.0)
    raise RuntimeError(f"only {sent_by_kind(data)} sent after {timeout:.0f} s (want {n} {kind})")


def reply(i: int, pid: int, member: str, period: str) -> tuple[str, str, bytes]:
    """A member's reply to her check-in (bench/common's reply, from her own address)."""
    _, rcpt, raw = c.reply_message(i, pid, period, NOW)
    placeholder = c.member_of(pid - 1).encode()
    return member, rcpt, raw.replace(placeholder, member.encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=50_000)
    ap.add_argument("--partnerships", type=int, default=5_000)
    ap.add_argument("--replies", type=int, default=2_000)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idling at the end")
    ap.add_argument("--tick-seconds", type=int, default=20, help="[schedule] tick_seconds")
    ap.add_argument("--digest-minutes", type=int, default=1, help="digest_delay_minutes")
    ap.add_argument("--site", action="store_true", help="with the admin site on")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args(argv)
    root = c.workdir("mailflow-bench-serve-rss-")
    phases: list[tuple[str, float, float]] = []
    try:
        relay = c.free_port()
        listen = c.free_port()
        site = c.free_port() if args.site else None
        config = c.write_config(root, listen_port=listen, relay_port=relay, site_port=site)
        text = config.read_text()
        text = text.replace("tick_seconds = 3600", f"tick_seconds = {args.tick_seconds}")
        text = text.replace(
            "digest_delay_minutes = 30", f"digest_delay_minutes = {args.digest_minutes}"
        )
        config.write_text(text)
        data = root / "data"
        people_csv, program_csv = root / "people.csv", root / "program.csv"
        admin.write_csv(people_csv, args.people)
        triples = write_program(program_csv, args.people, args.partnerships)
        now = NOW.isoformat()
        c.progress(f"people import of {args.people:,} people")
        _, s = admin.run(config, "people", "import", str(people_csv), now=IMPORTED)
        c.progress(f"  {s.seconds:.1f} s, peak RSS {s.rss_mb:.0f} MB")
        c.progress(f"partnerships import of {args.partnerships:,} partnerships")
        _, s = admin.run(config, "partnerships", "import", str(program_csv), now=IMPORTED)
        c.progress(f"  {s.seconds:.1f} s, peak RSS {s.rss_mb:.0f} MB")
        n = len(triples)
        with c.sink(relay), root.joinpath("serve.log").open("wb") as log:
            proc = subprocess.Popen(
                [c.MAILFLOW, "--now", now, "--config", str(config), "serve"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=c.bench_env(),
            )
            try:
                c.wait_port(listen, timeout=300)
                phases.append(("listening", *memory(proc.pid)))
                c.progress("serve is up; waiting for the introductions and check-ins")
                wait_sent(data, "checkin", n, proc, timeout=1800)
                wait_sent(data, "intro", n, proc, timeout=600)
                c.wait_idle(proc.pid)
                phases.append((f"first tick: intros and {n:,} check-ins sent", *memory(proc.pid)))
                from mailflow.schedule import current_period
                from mailflow.store import Store

                store = Store(data)
                sample = store.core().partnership(1)
                assert sample is not None
                period = current_period(sample, c.UTC_TZ, c.settings(), NOW)
                assert period is not None
                k = min(args.replies, n)
                messages = [
                    reply(i, 1 + i, triples[i][0], period.label) for i in range(k)
                ]  # fmt: skip
                c.progress(f"{k:,} replies to period {period.label}")
                c.send_concurrently(listen, messages, 8)
                c.wait_stored(data, period.label, k, timeout=600, proc=proc)
                c.wait_idle(proc.pid)
                phases.append((f"{k:,} replies stored", *memory(proc.pid)))
                if site is not None:
                    c.wait_port(site, timeout=120)
                    client = c.site_client(config, site, NOW, "admin@bench.example.com")
                    client.get("/")
                    client.get("/partnerships")
                    phases.append(("admin site: dashboard and list shown", *memory(proc.pid)))
                c.progress(
                    "waiting for the digests (the next tick once the delay after a reply passed)"
                )
                wait_sent(data, "digest", k, proc, timeout=600)
                c.wait_idle(proc.pid)
                phases.append((f"{k:,} digests sent", *memory(proc.pid)))
                c.progress(f"idling {args.idle:.0f} s")
                time.sleep(args.idle)
                phases.append((f"idle {args.idle:.0f} s", *memory(proc.pid)))
                sent = sent_by_kind(data)
            finally:
                c.stop_process(proc, c.signal.SIGINT)
    finally:
        if args.keep:
            c.progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"serve at {args.people:,} people, {n:,} partnerships (site {'on' if site else 'off'})")
    for name, rss, hwm in phases:
        print(f"  {name:<48} VmRSS {rss:6.0f} MB  VmHWM {hwm:6.0f} MB")
    print(f"  sent: {', '.join(f'{v:,} {k}' for k, v in sorted(sent.items()))}")
    print(f"serve_rss: peak {phases[-1][2]:.0f} MB, steady {phases[-1][1]:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
