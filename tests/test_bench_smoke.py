"""The benches still run: each with a tiny N, checking only the shape of its last line.

No timing is asserted here (the numbers belong in the README, measured at full size).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
LAST = re.compile(r"^(\w+): ours [\d,]+/s, raw [\d,]+/s, ratio \d+\.\d\d$")


def run_bench(name: str, *args: str, timeout: float = 110) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


@pytest.mark.timeout(120)
def test_ingest_bench_runs() -> None:
    lines = run_bench("ingest", "--n", "40", "--clients", "2", "--partnerships", "10")
    m = LAST.match(lines[-1])
    assert m and m.group(1) == "ingest", lines


@pytest.mark.timeout(120)
def test_parse_bench_runs() -> None:
    lines = run_bench("parse", "--n", "20", "--repeat", "1")
    m = LAST.match(lines[-1])
    assert m and m.group(1) == "parse", lines
    assert lines[0].startswith("parse bench replies: ours "), lines


@pytest.mark.timeout(120)
def test_fanout_bench_runs() -> None:
    lines = run_bench("fanout", "--n", "30")
    m = LAST.match(lines[-1])
    assert m and m.group(1) == "fanout", lines


@pytest.mark.timeout(120)
def test_history_bench_runs() -> None:
    lines = run_bench(
        "history", "--n", "30", "--clients", "2", "--partnerships", "10", "--weeks", "2"
    )
    assert re.match(r"^serve peak RSS at 10 partnerships: \d+ MB$", lines[-2]), lines
    m = LAST.match(lines[-1])
    assert m and m.group(1) == "history", lines


@pytest.mark.timeout(120)
def test_history_bench_runs_with_the_site() -> None:
    lines = run_bench(
        "history", "--n", "10", "--clients", "2", "--partnerships", "10", "--weeks", "1", "--site"
    )
    assert re.match(
        r"^serve peak RSS at 10 partnerships with the admin site: \d+ MB$", lines[-2]
    ), lines


@pytest.mark.timeout(120)
def test_web_bench_runs() -> None:
    lines = run_bench("web", "--n", "30", "--weeks", "2", "--rounds", "5")
    assert re.match(
        r"^web: dashboard p95 [\d.]+ ms, list p95 [\d.]+ ms, static p95 [\d.]+ ms, "
        r"ratio [\d.]+ \(dashboard\), [\d.]+ \(list\)$",
        lines[-1],
    ), lines


@pytest.mark.timeout(300)
def test_admin_bench_runs() -> None:
    # ~25 cold CLI processes: a minute on a busy machine, hence the longer bound.
    lines = run_bench(
        "admin", "--sizes", "20,40", "--runs", "1", "--partnerships", "1", timeout=290
    )
    ratios = [x for x in lines if " people / 20 people time ratio " in x]
    assert len(ratios) == 9, lines  # every admin action, people remove included
    assert all(re.search(r"cpu ratio [\d.]+, RSS \d+ MB, read [\d.]+ MB", x) for x in ratios)


@pytest.mark.timeout(300)
def test_serve_rss_bench_runs() -> None:
    lines = run_bench(
        "serve_rss", "--people", "120", "--partnerships", "3", "--replies", "2", "--idle", "0",
        "--tick-seconds", "1", "--digest-minutes", "0", timeout=290,
    )  # fmt: skip
    assert "sent: 3 checkin, 2 digest, 6 intro" in lines[-2], lines
    assert re.match(r"^serve_rss: peak \d+ MB, steady \d+ MB$", lines[-1]), lines
