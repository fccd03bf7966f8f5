"""Admin site latency at 10,000 partnerships: the dashboard and the partnerships list, as p95
against a static page served by the same server in the same run.

    python bench/web.py [--n 10000] [--weeks 12] [--rounds 400]

Builds the program directly through Store (bench/common.py: n accepted partnerships, 2n
people, `--weeks` weeks of history with a report each, this week's check-ins recorded),
starts `mailflow web` alone on a free loopback port (no scheduler ticks in the way), signs in
with a `mailflow web link` link, then asks, round after round over one keep-alive connection,
for: the static help page, the dashboard, the first page of the list, a page deep in the list,
and a search. The first dashboard (a cold snapshot: `status` over every partnership and the
12 weeks' summaries) is reported apart, and so is the site process's peak RSS. Last line:

    web: dashboard p95 X ms, list p95 Y ms, static p95 Z ms, ratio A (dashboard), B (list)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MAILFLOW,
    bench_env,
    free_port,
    populate,
    progress,
    site_client,
    wait_port,
    workdir,
    write_config,
)

ADMIN = "admin@bench.example.com"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="partnerships")
    ap.add_argument("--weeks", type=int, default=12, help="weeks of history")
    ap.add_argument("--rounds", type=int, default=400, help="requests of each kind")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args(argv)

    root = workdir("web-")
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday: the week is under way
    try:
        progress(f"populating {args.n:,} partnerships with {args.weeks} weeks of history")
        populate(root / "data", args.n, now, history_weeks=args.weeks)
        port = free_port()
        config = write_config(root)
        text = config.read_text().replace("[web]\nenabled = false\n", "")
        config.write_text(text + f'[web]\nport = {port}\nadmins = ["{ADMIN}"]\n')
        base = [MAILFLOW, "--now", now.isoformat(), "--config", str(config)]
        server = subprocess.Popen(
            [*base, "web"], env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(port, timeout=60)
            client = site_client(config, port, now, ADMIN)
            started = time.perf_counter()
            client.get("/")
            cold = (time.perf_counter() - started) * 1000
            progress(f"first dashboard (cold snapshot): {cold:.0f} ms")
            kinds = {
                "static": "/static/help.html",
                "dashboard": "/",
                "list": "/partnerships",
                "list page 150": "/partnerships?page=150",
                "list search": "/partnerships?q=member4242",
            }
            for path in kinds.values():  # warm-up
                for _ in range(20):
                    client.get(path)
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind, path in kinds.items():
                    t0 = time.perf_counter()
                    client.get(path)
                    times[kind].append((time.perf_counter() - t0) * 1000)
            rss = _peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=20)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    p95 = {k: percentile(v, 95) for k, v in times.items()}
    for kind, values in times.items():
        print(
            f"{kind:14} median {statistics.median(values):6.2f} ms  p95 {p95[kind]:6.2f} ms  "
            f"p99 {percentile(values, 99):6.2f} ms  max {max(values):7.2f} ms  "
            f"ratio p95 {p95[kind] / p95['static']:.2f}"
        )
    print(f"cold dashboard (first request, snapshot of {args.n:,}): {cold:.0f} ms")
    print(f"`mailflow web` peak RSS at {args.n:,} partnerships: {rss:.0f} MB")
    worst_list = max(p95["list"], p95["list page 150"], p95["list search"])
    print(
        f"web: dashboard p95 {p95['dashboard']:.2f} ms, list p95 {worst_list:.2f} ms, "
        f"static p95 {p95['static']:.2f} ms, ratio {p95['dashboard'] / p95['static']:.2f} "
        f"(dashboard), {worst_list / p95['static']:.2f} (list)"
    )
    return 0


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of the site's process: what the site costs when it runs alone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


if __name__ == "__main__":
    sys.exit(main())
