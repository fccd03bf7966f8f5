"""History: the ingest rate with a year of records against an empty store, and serve's RSS.

Usage: ``.venv/bin/python bench/history.py [--n 3000] [--partnerships 10000] [--weeks 52] [--site]``

Both runs use `bench/ingest.py`'s path (`serve` as a subprocess, replies from concurrent SMTP
clients, timed until every reply is a stored record) with the same partnerships. "Empty" has
only the current week's scheduler records (so serve's start-up tick has nothing to send);
"year" has in addition `--weeks` past weeks, each with a week record, a report and the
check-in and digest outgoing records for every partnership (written directly through Store).
Peak RSS is serve's VmHWM (/proc/PID/status) at the end of the run with the year of history.
`--site` runs both with the admin site on, an admin viewing the dashboard before the replies
and the dashboard and the partnerships list after them: what the site adds to serve's peak.

Output: a line ``serve peak RSS at N partnerships: X MB``, then
``history: ours X/s, raw Y/s, ratio Z`` (ours: with the year; raw: the empty store).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
from ingest import measure_ours  # noqa: E402


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pid: int) -> float:
    """serve's peak RSS plus that of its children (the ingest process): the whole service."""
    total = _hwm_kb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    kids = [_hwm_kb(int(child)) for child in children]
    c.progress(f"peak RSS: serve {total / 1024:.0f} MB, ingest process {sum(kids) / 1024:.0f} MB")
    return (total + sum(kids)) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="replies per run (default 3000)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--partnerships", type=int, default=10_000)
    ap.add_argument("--weeks", type=int, default=52, help="weeks of history (default 52)")
    ap.add_argument("--site", action="store_true", help="with the admin site on and in use")
    args = ap.parse_args(argv)
    rss: list[float] = []
    roots = [c.workdir(f"mailflow-bench-history-{k}-") for k in "ey"]
    try:
        c.progress("empty store")
        empty, _ = measure_ours(roots[0], args.n, args.clients, args.partnerships, site=args.site)
        shutil.rmtree(roots[0], ignore_errors=True)
        c.progress(f"store with {args.weeks} weeks of history")
        started = time.monotonic()
        year, _ = measure_ours(
            roots[1],
            args.n,
            args.clients,
            args.partnerships,
            history_weeks=args.weeks,
            on_done=lambda pid: rss.append(peak_rss_mb(pid)),
            site=args.site,
        )
        c.progress(f"  (with set-up: {time.monotonic() - started:.0f} s)")
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    site = " with the admin site" if args.site else ""
    print(f"serve peak RSS at {args.partnerships:,} partnerships{site}: {rss[0]:.0f} MB")
    print(c.result_line("history", year, empty))
    return 0


if __name__ == "__main__":
    sys.exit(main())
