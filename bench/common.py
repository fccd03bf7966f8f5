"""Shared bits of the benches: a data directory built directly through Store, a raw SMTP sink,
`serve` as a subprocess, concurrent smtplib clients and the result line.

Not part of the test suite (nothing here asserts a duration). Every network endpoint is on
127.0.0.1 and every wait is bounded.

Run `python bench/common.py sink PORT` for the do-nothing aiosmtpd sink the benches use as
the raw limit: it answers 250 to everything and counts nothing.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
# Where benches keep their data. Not /tmp: on this kind of machine creating a file there
# costs ~0.8 ms (against ~0.03 ms on the same disk elsewhere), which would measure the
# sandbox, not mailflow. MAILFLOW_BENCH_DIR overrides it.
BENCH_DIR = Path(os.environ.get("MAILFLOW_BENCH_DIR") or HERE / ".work")


def workdir(prefix: str) -> Path:
    """A fresh directory for one bench run (the caller removes it)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=BENCH_DIR))


sys.path.insert(0, str(HERE.parent))

from mailflow.models import Goal, Outgoing, Partnership, Person, Report, Week  # noqa: E402
from mailflow.schedule import Settings, current_period, previous_period  # noqa: E402
from mailflow.store import Store  # noqa: E402
from mailflow.tokens import CHECKIN, make_token, reply_address  # noqa: E402

PYTHON = sys.executable
MAILFLOW = str(Path(sys.executable).parent / "mailflow")
DOMAIN = "bench.example.com"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
UTC_TZ = ZoneInfo("UTC")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def result_line(name: str, ours: float, raw: float) -> str:
    ratio = ours / raw if raw > 0 else 0.0
    return f"{name}: ours {ours:,.0f}/s, raw {raw:,.0f}/s, ratio {ratio:.2f}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def write_config(
    root: Path,
    *,
    listen_port: int | None = None,
    relay_port: int | None = None,
    ingest_process: bool = False,
    site_port: int | None = None,
) -> Path:
    """The bench's config; `site_port`: with the admin site on that port (anyone may sign in
    with `mailflow web link`), else without it."""
    lines = [
        "[service]",
        f'domain = "{DOMAIN}"',
        f'data_dir = "{root / "data"}"',
        'timezone = "UTC"',
        "[listener]",
        'host = "127.0.0.1"',
        f"port = {listen_port or free_port()}",
        "max_connections = 64",
        f"ingest_process = {'true' if ingest_process else 'false'}",
        "[relay]",
        f'host = "{"127.0.0.1" if relay_port else ""}"',
        f"port = {relay_port or 25}",
        "timeout_seconds = 30",
        "[schedule]",
        # No scheduled tick while a bench runs (serve still runs one at start).
        "tick_seconds = 3600",
        # A bench sends at whatever hour it runs: quiet hours would hold the mail it times.
        'quiet_hours = ""',
        "digest_delay_minutes = 30",
        # These benches measure the mail path, without the site unless asked (bench/web.py
        # measures the site; history.py --site what it adds to serve's memory).
        "[web]",
        *([f"port = {site_port}"] if site_port else ["enabled = false"]),
    ]
    path = root / "mailflow.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_env() -> dict[str, str]:
    return {**os.environ, "MAILFLOW_SECRET": SECRET}


# -- the admin site ---------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection to the admin site, with the session cookie."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if method != "GET":
                raise
            # The server closed the idle keep-alive connection (uvicorn: after 5 s): a GET
            # is asked again on a new one.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        for cookie in resp.headers.get_all("set-cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0].strip('"')
        if resp.status not in (200, 303):
            raise RuntimeError(f"{method} {path}: {resp.status}")
        return resp.status, data

    def get(self, path: str) -> str:
        return self.request("GET", path)[1]

    def sign_in(self, link: str) -> None:
        path = link.split(str(self.port), 1)[1]
        page = self.get(path)
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert match, page[:500]
        status, _ = self.request("POST", path, f"csrf={match.group(1)}")
        assert status == 303 and "mailflow_session" in self.cookies


def site_client(config: Path, port: int, now: datetime, email: str) -> Client:
    """Signed in to the site of `config` with a `mailflow web link` link."""
    link = subprocess.run(
        [MAILFLOW, "--now", now.isoformat(), "--config", str(config), "web", "link", email],
        env=bench_env(), capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip()  # fmt: skip
    client = Client(port)
    client.sign_in(link)
    return client


# -- data -----------------------------------------------------------------------------------


def member_of(i: int) -> str:
    return f"member{i}@people.example.com"


def partner_of(i: int) -> str:
    return f"partner{i}@people.example.com"


def settings() -> Settings:
    from mailflow.config import ScheduleConfig

    return Settings.from_config(ScheduleConfig())


@dataclass
class Population:
    partnerships: int
    period: str  # the current period at `now`
    previous: str
    start: date


def populate(
    data_dir: Path,
    n: int,
    now: datetime,
    *,
    history_weeks: int = 0,
    checkins_done: bool = True,
) -> Population:
    """n accepted, introduced partnerships (2n people) written directly through Store.

    checkins_done: the current period's check-in, reminder and no-report are recorded as done,
    so a tick at `now` has nothing to send. history_weeks: that many past weeks, each with a
    week record, one report and the check-in and digest outgoing records per partnership.
    """
    store = Store(data_dir)
    store.init()
    start = (now - timedelta(weeks=history_weeks + 2)).date()
    start -= timedelta(days=start.weekday())
    created = now - timedelta(weeks=history_weeks + 3)
    goals = (
        Goal(1, start + timedelta(days=700), "Give the all-hands talk without notes"),
        Goal(2, start + timedelta(days=720), "Run two design reviews"),
    )
    with store.core_tx() as core:
        for i in range(n):
            core.put_person(Person(member_of(i), f"Member {i}", "Engineering"))
            core.put_person(Person(partner_of(i), f"Partner {i}", "Design"))
            core.put_partnership(
                Partnership(
                    id=i + 1,
                    member=member_of(i),
                    partner=partner_of(i),
                    skill="public speaking",
                    goals=goals,
                    why="I want to lead design reviews with confidence.",
                    saddle="Book the room again for next week.",
                    start=start,
                    created_at=created,
                    introduced_at=created,
                )
            )
    s = settings()
    sample = store.core().partnership(1)
    assert sample is not None
    cur = current_period(sample, UTC_TZ, s, now)
    assert cur is not None
    prev = previous_period(sample, UTC_TZ, s, cur)
    if checkins_done:
        at = cur.checkin_at
        with store.week_tx(cur.label) as week:
            for i in range(n):
                week.put_week(Week(i + 1, cur.label, at, at, at))
    label_day = cur.checkin_at.date()
    for w in range(1, history_weeks + 1):
        day = label_day - timedelta(weeks=w)
        y, k, _ = day.isocalendar()
        label = f"{y}-W{k:02d}"
        at = cur.checkin_at - timedelta(weeks=w)
        with store.week_tx(label) as week:
            for i in range(n):
                pid = i + 1
                week.put_week(
                    Week(pid, label, at, digest_at=at + timedelta(hours=30), digested_reports=1)
                )
                week.add_report(
                    Report(
                        partnership_id=pid,
                        period=label,
                        received_at=at + timedelta(hours=3),
                        message_id=f"<hist.{pid}.{label}@people.example.com>",
                        sender=member_of(i),
                        text=REPORT_TEXT,
                        setback=False,
                        done="Gave the team update without notes.",
                        next="Ask for feedback from two people.",
                        raw_ref=f"mail/in/{label}/hist-{pid}.eml",
                    )
                )
                for kind in ("checkin", "digest"):
                    key = f"{kind}:{pid}:{label}" + (":1" if kind == "digest" else "")
                    week.put_outgoing(
                        Outgoing(
                            key=key,
                            kind=kind,
                            to=member_of(i) if kind == "checkin" else partner_of(i),
                            message_id=f"<{kind}.{pid}.{label}@{DOMAIN}>",
                            path=f"mail/out/{label}/{key.replace(':', '_')}.eml",
                            created_at=at,
                            partnership_id=pid,
                            period=label,
                            status="sent",
                            attempts=1,
                            sent_at=at,
                        )
                    )
        if w % 10 == 0 or w == history_weeks:
            progress(f"history: {w}/{history_weeks} weeks written")
    return Population(n, cur.label, prev.label, start)


REPORT_TEXT = (
    "Done: gave the team update on Tuesday without notes, and it went better than I feared.\n"
    "Setback: none this week, though I rushed the last slide.\n"
    "Next: ask two people for feedback and book the room for the all-hands rehearsal.\n"
)

_QUOTED = [
    "Hi {name},",
    "",
    "It's check-in time for week {week} of your partnership on public speaking.",
    "Your goals:",
    "  1. Give the all-hands talk without notes (due in 98 days)",
    "  2. Run two design reviews (due in 118 days)",
    "Why it matters to you: I want to lead design reviews with confidence.",
    "",
    "Reply to this email with what you did this week. A few lines are enough:",
    "  Done: what you did towards your goals",
    "  Setback: anything that got in the way (it is fine to have one)",
    "  Next: what you will do next week",
    "",
    "If you had a setback, your plan to get back in the saddle was:",
    "  Book the room again for next week.",
    "",
    "Commands you can put on a line of their own: pause until DATE, resume, goal N done, stop.",
    "Your partner {partner} sees a digest of your reply; nobody else does.",
    "",
    "-- ",
    "mailflow, for the Hot Team program",
]

_NEW = [
    "Done: I rehearsed the opening of the talk twice in front of the mirror and once for {n}",
    "colleagues at the Thursday stand-up. I kept to five minutes and only looked at my notes",
    "once, at the transition to the numbers.",
    "Setback: I skipped the Friday run-through because the release slipped.",
    "Next: book the big room for a full rehearsal and ask Grace for honest feedback.",
]


def reply_message(i: int, pid: int, period: str, sent: datetime) -> tuple[str, str, bytes]:
    """(mail_from, rcpt, raw): a member's reply of 2-4 KB, new text above quoted history."""
    member = member_of(pid - 1)
    rcpt = reply_address(make_token(SECRET.encode(), CHECKIN, pid, period), DOMAIN)
    new = "\n".join(line.format(n=3 + i % 5) for line in _NEW)
    quoted_lines = [
        line.format(name=f"Member {pid - 1}", week=period, partner=f"Partner {pid - 1}")
        for line in _QUOTED
    ]
    # 1 to 3 rounds of quoted history: 2-4 KB in all.
    rounds = 1 + i % 3
    quoted: list[str] = []
    prefix = ">"
    for r in range(rounds):
        quoted.append(f"{prefix} On Mon, {sent:%d %b %Y} at 09:0{r} mailflow <checkin@{DOMAIN}>")
        quoted.append(f"{prefix} wrote:")
        quoted.extend(f"{prefix} {line}".rstrip() for line in quoted_lines)
        prefix += ">"
    body = (
        f"{new}\n\nThanks,\nMember {pid - 1}\n\nOn {sent:%a, %d %b %Y} at 09:00, mailflow wrote:\n"
    )
    body += "\n".join(quoted) + "\n"
    msg = EmailMessage()
    msg["From"] = f"Member {pid - 1} <{member}>"
    msg["To"] = rcpt
    msg["Subject"] = f"Re: Your check-in for {period}"
    msg["Date"] = format_datetime(sent)
    msg["Message-ID"] = f"<bench.{i}.{pid}.{os.getpid()}.{time.time_ns()}@people.example.com>"
    msg["In-Reply-To"] = f"<checkin.x@{DOMAIN}>"
    msg.set_content(body)
    return member, rcpt, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# -- processes ------------------------------------------------------------------------------


def _client(port: int, batch: Sequence[tuple[str, str, bytes]], start_at: float) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.com", timeout=60) as s:
        for mail_from, rcpt, raw in batch:
            s.sendmail(mail_from, [rcpt], raw)


def send_concurrently(
    port: int, messages: Sequence[tuple[str, str, bytes]], clients: int
) -> tuple[float, float]:
    """Send every message with `clients` processes, one SMTP connection each.

    Returns (started, finished) on the time.time() clock: every message had its 250 by then.
    """
    ctx = mp.get_context("fork")
    start_at = time.time() + 0.3
    procs = [
        ctx.Process(target=_client, args=(port, messages[k::clients], start_at), daemon=True)
        for k in range(clients)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        if p.exitcode != 0:
            raise RuntimeError(f"an SMTP client failed (exit code {p.exitcode})")
    return start_at, time.time()


@contextmanager
def sink(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The raw limit: a do-nothing aiosmtpd sink in its own process."""
    proc = subprocess.Popen(
        [PYTHON, str(HERE / "common.py"), "sink", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def serve(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as err:
        # e.g. BENCH_SERVE_WRAP="py-spy record -o serve.svg --" to profile serve itself.
        wrap = os.environ.get("BENCH_SERVE_WRAP", "").split()
        proc = subprocess.Popen(
            [*wrap, MAILFLOW, "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=bench_env(),
        )
    try:
        yield proc
    finally:
        # SIGINT: serve stops on it as on SIGTERM, and a profiler wrapper writes its output.
        stop_process(proc, signal.SIGINT)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until the process used under 5% of a core for half a second (or the timeout)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.025:
            return
        last = now


def count_files(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0


def wait_stored(data_dir: Path, period: str, n: int, timeout: float, proc=None) -> float:
    """Time (time.time()) when n replies were archived under mail/in/PERIOD/.

    A reply is archived only after its record was written, so the archive count is a cheap
    progress signal; the caller checks the records themselves afterwards.
    """
    folder = data_dir / "mail" / "in" / period
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        done = count_files(folder)
        if done >= n:
            return time.time()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        if done // 1000 != last // 1000:
            progress(f"  stored {done}/{n}")
        last = done
        time.sleep(0.02)
    raise RuntimeError(f"only {count_files(folder)}/{n} replies stored after {timeout:.0f} s")


def stored_reports(data_dir: Path, period: str) -> int:
    raw = json.loads((data_dir / "db" / "weeks" / f"{period}.json").read_bytes())
    return len(raw.get("reports", {}))


def quarantined(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "quarantine").glob("*") if not p.name.endswith(".txt"))


def now_in_period() -> datetime:
    """The real clock (serve reads it), checked to be clear of a period edge."""
    now = datetime.now(UTC).replace(microsecond=0)
    return now


def _run_sink(port: int) -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = asyncio.Event()  # noqa: F841 - placeholder for clarity; SIGTERM ends the process
    signal.signal(signal.SIGTERM, lambda *_: (controller.stop(), sys.exit(0)))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "sink":
        _run_sink(int(sys.argv[2]))
    else:
        print("usage: common.py sink PORT", file=sys.stderr)
        sys.exit(2)
