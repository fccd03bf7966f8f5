"""Ingest: N replies from concurrent SMTP clients to `serve`, until every one is a record.

Usage: ``.venv/bin/python bench/ingest.py [--n 5000] [--clients 8] [--partnerships 1000]``

Ours: `mailflow serve` (a subprocess, real listener, spool, ingest thread, store) receives
N member replies (2-4 KB, new text above one to three rounds of quoted check-ins) from
`--clients` processes with one SMTP connection each; the clock stops when every reply is
stored as a progress record (its raw message archived under mail/in/, which happens only
after the record is written). Raw: the same clients send the same messages to a do-nothing
aiosmtpd sink (`bench/common.py sink`) that only answers 250.

Last line on stdout: ``ingest: ours X/s, raw Y/s, ratio Z``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402


def measure_ours(
    root: Path,
    n: int,
    clients: int,
    partnerships: int,
    history_weeks: int = 0,
    on_done: Callable[[int], object] | None = None,
    ingest_process: bool = False,
    site: bool = False,
) -> tuple[float, Path]:
    """Replies per second through `serve`, and the data dir (for a look afterwards).

    `site`: with the admin site on, and an admin looking at the dashboard before the replies
    and again once they are stored (the numbers recomputed over the new records)."""
    port = c.free_port()
    site_port = c.free_port() if site else None
    config = c.write_config(
        root, listen_port=port, ingest_process=ingest_process, site_port=site_port
    )
    data = root / "data"
    now = c.now_in_period()
    c.progress(f"populating {partnerships} partnerships ({history_weeks} weeks of history)")
    pop = c.populate(data, partnerships, now, history_weeks=history_weeks)
    messages = [c.reply_message(i, 1 + i % partnerships, pop.period, now) for i in range(n)]
    sizes = sorted(len(m[2]) for m in messages)
    c.progress(f"{n} replies of {sizes[0]}-{sizes[-1]} bytes to period {pop.period}")
    before = c.stored_reports(data, pop.period)
    with c.serve(config, root / "serve.log") as proc:
        c.wait_port(port, timeout=120)
        c.wait_idle(proc.pid)  # serve's start-up tick (nothing is due) must not count
        client = None
        if site_port is not None:
            c.wait_port(site_port, timeout=120)
            client = c.site_client(config, site_port, now, "admin@bench.example.com")
            client.get("/")
            c.progress("admin site: dashboard shown")
        c.progress(f"serve listening on {port}; sending with {clients} clients")
        cpu0 = c.cpu_seconds(proc.pid)
        started, sent = c.send_concurrently(port, messages, clients)
        c.progress(f"  all {n} accepted after {sent - started:.2f} s")
        done = c.wait_stored(data, pop.period, n, timeout=max(120.0, n / 20), proc=proc)
        cpu = c.cpu_seconds(proc.pid) - cpu0
        if client is not None:
            client.get("/")  # the data changed: the dashboard waits for fresh numbers
            client.get("/partnerships")
        if on_done is not None:
            on_done(proc.pid)  # e.g. read serve's peak RSS while it still runs
        c.progress(f"  serve used {cpu:.2f} s CPU ({cpu / (done - started):.0%} of one core)")
    elapsed = done - started
    stored = c.stored_reports(data, pop.period) - before
    bad = c.quarantined(data)
    if stored != n or bad:
        raise RuntimeError(f"expected {n} new records, found {stored} ({bad} quarantined)")
    c.progress(f"ours: {n} stored in {elapsed:.2f} s")
    return n / elapsed, data


def measure_raw(n: int, clients: int) -> float:
    port = c.free_port()
    now = c.now_in_period()
    messages = [c.reply_message(i, 1 + i % 1000, "2026-W01", now) for i in range(n)]
    with c.sink(port):
        started, done = c.send_concurrently(port, messages, clients)
    c.progress(f"raw: {n} accepted by the sink in {done - started:.2f} s")
    return n / (done - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="replies (default 5000)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent SMTP clients")
    ap.add_argument("--partnerships", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument(
        "--ingest-process", action="store_true", help="serve with [listener] ingest_process"
    )
    args = ap.parse_args(argv)
    root = c.workdir("mailflow-bench-ingest-")
    try:
        raw = measure_raw(args.n, args.clients)
        ours, _ = measure_ours(
            root,
            args.n,
            args.clients,
            min(args.partnerships, args.n),
            ingest_process=args.ingest_process,
        )
    finally:
        if args.keep:
            c.progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(c.result_line("ingest", ours, raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
