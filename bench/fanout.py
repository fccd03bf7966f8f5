"""Fan-out: one tick that sends the check-ins of N partnerships through the relay.

Usage: ``.venv/bin/python bench/fanout.py [--n 10000] [--profile FILE.html]``

Ours: N accepted partnerships whose check-in is due (written directly through Store), then
one `App.tick(now)`, timed: render every check-in, write and sync the files, record the
jobs, deliver through the relay (a do-nothing aiosmtpd sink, `bench/common.py sink`, in its
own process) and mark them sent. Raw: plain smtplib sends the same N messages (the very
files ours rendered, read into memory first) to the same sink over one connection.

Last line on stdout: ``fanout: ours X/s, raw Y/s, ratio Z``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import smtplib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402


def measure(n: int, profile: Path | None) -> tuple[float, float]:
    from mailflow.app import build
    from mailflow.config import load
    from mailflow.store import Store

    root = c.workdir("mailflow-bench-fanout-")
    try:
        port = c.free_port()
        config_path = c.write_config(root, relay_port=port)
        data = root / "data"
        now = c.now_in_period()
        c.progress(f"populating {n} partnerships with their check-in due")
        pop = c.populate(data, n, now, checkins_done=False)
        with c.sink(port) as sink:
            app = build(load(config_path, {"MAILFLOW_SECRET": c.SECRET}))
            c.progress("tick: render, record and send every check-in")
            profiler = None
            if profile is not None:
                from pyinstrument import Profiler

                profiler = Profiler()
                profiler.start()
            cpu_started, sink_started = _cpu(), c.cpu_seconds(sink.pid)
            started = time.perf_counter()
            report = app.tick(now)
            elapsed = time.perf_counter() - started
            cpu, sink_cpu = _cpu() - cpu_started, c.cpu_seconds(sink.pid) - sink_started
            if profiler is not None:
                profiler.stop()
                profile.write_text(profiler.output_html())
                c.progress(f"profile written to {profile}")
            outgoing = Store(data).week(pop.period).outgoings()
            sent = sum(1 for o in outgoing if o.status == "sent" and o.kind == "checkin")
            if sent != n:
                tail = "; ".join(report.lines[-3:])
                raise RuntimeError(f"expected {n} check-ins sent, found {sent} ({tail})")
            c.progress(f"ours: {n} check-ins sent in {elapsed:.2f} s")
            # CPU per message depends far less on the machine's load than the rates do.
            c.progress(
                f"cpu per message: ours {1000 * cpu / n:.2f} ms (both threads), "
                f"sink {1000 * sink_cpu / n:.2f} ms"
            )
            messages = [
                (o.to, (data / o.path).read_bytes()) for o in sorted(outgoing, key=lambda o: o.key)
            ]
            sender = app.svc.keys.bounce_address
            c.progress(f"raw: smtplib, one connection, {n} pre-built messages")
            raw_cpu, sink_started = _cpu(), c.cpu_seconds(sink.pid)
            raw_started = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", port, local_hostname=c.DOMAIN, timeout=60) as smtp:
                for to, data_bytes in messages:
                    smtp.sendmail(sender, [to], data_bytes)
            raw_elapsed = time.perf_counter() - raw_started
            raw_cpu, sink_cpu = _cpu() - raw_cpu, c.cpu_seconds(sink.pid) - sink_started
            c.progress(f"raw: {n} sent in {raw_elapsed:.2f} s")
            c.progress(
                f"cpu per message: raw client {1000 * raw_cpu / n:.2f} ms, "
                f"sink {1000 * sink_cpu / n:.2f} ms"
            )
        return n / elapsed, n / raw_elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="partnerships (default 10000)")
    ap.add_argument("--profile", type=Path, default=None, help="pyinstrument HTML of the tick")
    args = ap.parse_args(argv)
    ours, raw = measure(args.n, args.profile)
    print(c.result_line("fanout", ours, raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
