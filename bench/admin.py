"""Admin actions against the size of the directory: cold CLI processes at 100 and at N people.

Usage: ``.venv/bin/python bench/admin.py [--sizes 100,10000,50000,100000] [--runs 5]
[--partnerships 50]``

For each size, a data directory is built the way an admin builds one: `people import` of an HR
export (40 departments, a manager tree ten wide and five deep, four time zones, one person in
five offering a skill), then `--partnerships` partnerships with `partnerships add` (the same
number at every size: the directory grows, the program does not). Then each admin action runs
`--runs` times as a cold `mailflow` process (a new interpreter, as an admin's shell starts it),
and the median wall time, the median CPU time (user + system of the child), the peak RSS (the
child's VmHWM) and the bytes it read (`rchar` of /proc/self/io at exit: files, pipes,
everything; "cmd" is what it read after `mailflow.cli` was imported, i.e. the command's data
and its lazy imports, without the interpreter's start) are printed.

The sizes are measured interleaved: all data directories are built first, then each round
runs every action once at every size (in a rotating order), so a burst of load from something
else on the machine hits all sizes alike instead of one. The wall-time ratio is the target's
measure; the CPU-time ratio is the same comparison with waiting for the CPU left out, which is
the steadier of the two on a busy machine.

The last lines compare each size with the smallest: ``ACTION: 50,000 people / 100 people
time ratio X (target <= 1.5), cpu ratio C, RSS Y MB, read Z MB``. Nothing here asserts a
duration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC")
SKILLS = ("public speaking", "sql", "negotiation", "writing")
NOW = "2026-11-23T12:00:00+00:00"  # a fixed instant: the bench never reads the wall clock
# The child runs the real CLI, then reports what it read and its peak RSS on its last line.
# Peak RSS is VmHWM of the child's own memory: ru_maxrss survives exec, so it reported the
# size of this bench process (which holds the CSV) rather than the command's.
RUNNER = (
    "import atexit, sys\n"
    "def _rchar():\n"
    "    io = dict(l.split(': ') for l in open('/proc/self/io').read().splitlines())\n"
    "    return int(io['rchar'])\n"
    "def _report():\n"
    "    st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
    "    rss = int(st['VmHWM'].split()[0])\n"
    '    sys.stderr.write(f"\\nBENCH rchar={_rchar()} start={_start} rss_kb={rss}\\n")\n'
    "atexit.register(_report)\n"
    "from mailflow.cli import main\n"
    "_start = _rchar()\n"
    "code = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "sys.exit(code)\n"
)


@dataclass
class Sample:
    seconds: float
    cpu: float
    rss_mb: float
    read_mb: float
    cmd_mb: float


def email(i: int) -> str:
    return f"p{i}@corp.example.com"


def manager_of(i: int) -> int | None:
    """Breadth-first tree, ten reports per manager: 0 is the root; depth 5 below 11,111."""
    return None if i == 0 else (i - 1) // 10


def department_of(i: int) -> str:
    # The subtree under each of the 100 second-level managers belongs to one department
    # (40 in all), so people far apart in the tree are eligible partners.
    top = i
    while top > 110:
        top = (top - 1) // 10
    return f"Dept{top % 40:02d}"


def write_csv(path: Path, n: int) -> None:
    rows = ["email,name,department,manager,timezone,offers"]
    for i in range(n):
        m = manager_of(i)
        offers = SKILLS[i % len(SKILLS)] if i % 5 == 0 else ""
        rows.append(
            f"{email(i)},Person {i},{department_of(i)},{email(m) if m is not None else ''},"
            f"{ZONES[i % len(ZONES)]},{offers}"
        )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def pairs(n: int, k: int) -> list[tuple[str, str, str]]:
    """k (member, partner, skill) triples: leaves in different departments and subtrees."""
    out: list[tuple[str, str, str]] = []
    last = n - 1
    i = 0
    while len(out) < k:
        member = last - i
        partner = (last - i - 25 * (1 + i % 7)) % n
        i += 1
        if partner in (0, member) or department_of(member) == department_of(partner):
            continue
        chain = set()
        j: int | None = member
        while j is not None:
            chain.add(j)
            j = manager_of(j)
        j = partner
        crossed = False
        while j is not None:
            crossed |= j in chain and j != 0
            j = manager_of(j)
        if crossed:
            continue
        out.append((email(member), email(partner), SKILLS[len(out) % len(SKILLS)]))
    return out


def run(
    config: Path, *args: str, now: str = NOW
) -> tuple[subprocess.CompletedProcess[str], Sample]:
    before = os.times()
    started = time.perf_counter()
    proc = subprocess.run(
        [c.PYTHON, "-c", RUNNER, "--now", now, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if proc.returncode != 0 or not last.startswith("BENCH "):
        raise RuntimeError(f"mailflow {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    fields = dict(part.split("=") for part in last.split()[1:])
    rchar, start = int(fields["rchar"]), int(fields["start"])
    return proc, Sample(
        seconds, cpu, int(fields["rss_kb"]) / 1024, rchar / 1e6, (rchar - start) / 1e6
    )


def build(root: Path, n: int, partnerships: int) -> tuple[Path, list[int]]:
    config = c.write_config(root)
    csv = root / "people.csv"
    write_csv(csv, n)
    c.progress(f"{n:,} people: people import")
    _, s = run(config, "people", "import", str(csv))
    c.progress(f"  import took {s.seconds:.1f} s, RSS {s.rss_mb:.0f} MB")
    pids: list[int] = []
    for member, partner, skill in pairs(n, partnerships):
        proc, _ = run(
            config, "partnerships", "add", "--member", member, "--partner", partner,
            "--skill", skill, "--goal", "2027-06-30 Lead the design review", "--why", "w",
            "--saddle", "s", "--accepted",
        )  # fmt: skip
        pids.append(int(proc.stdout.strip().splitlines()[-1]))
    core = root / "data" / "db" / "core.json"
    c.progress(f"  {partnerships} partnerships; core.json {core.stat().st_size / 1e6:.1f} MB")
    return config, pids


Results = dict[str, list[Sample]]


def round_of_actions(config: Path, n: int, pids: list[int], k: int, out: Results) -> None:
    """Round `k` of the actions that leave the program as it was (or grow it by one)."""

    def timed(name: str, *args: str) -> None:
        out.setdefault(name, []).append(run(config, *args)[1])

    new = f"new{k}@corp.example.com"
    timed("people add", "people", "add", new, "--name", f"New {k}", "--department",
          "DeptNew", "--manager", email(1), "--timezone", "UTC")  # fmt: skip
    timed("people update", "people", "update", new, "--name", f"New Person {k}")
    member, partner, skill = pairs(n, len(pids) + k + 1)[-1]
    timed("partnerships add", "partnerships", "add", "--member", member, "--partner",
          partner, "--skill", skill, "--goal", "2027-06-30 Lead the review", "--why", "w",
          "--saddle", "s", "--accepted")  # fmt: skip
    pid = str(pids[k % len(pids)])
    timed("partnerships pause", "partnerships", "pause", pid)
    timed("partnerships resume", "partnerships", "resume", pid)
    timed("partnerships show", "partnerships", "show", pid)
    timed("status", "status")


def round_of_endings(config: Path, pids: list[int], k: int, out: Results, remove: bool) -> None:
    """Round `k` of `end` and `people remove`, last: they change what the others see."""
    out.setdefault("partnerships end", []).append(
        run(config, "partnerships", "end", str(pids[-1 - k]))[1]
    )
    if remove:
        out.setdefault("people remove", []).append(
            run(config, "people", "remove", f"new{k}@corp.example.com")[1]
        )


def _has_command(config: Path, *words: str) -> bool:
    proc = subprocess.run(
        [c.MAILFLOW, "--config", str(config), *words, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", default="100,10000,50000,100000", help="directory sizes, comma-separated"
    )
    ap.add_argument("--runs", type=int, default=5, help="cold runs per action (median)")
    ap.add_argument("--partnerships", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, Results] = {n: {} for n in sizes}
    roots: dict[int, Path] = {}
    built: dict[int, tuple[Path, list[int]]] = {}
    try:
        for n in sizes:
            roots[n] = c.workdir(f"mailflow-bench-admin-{n}-")
            built[n] = build(roots[n], n, args.partnerships)
        remove = _has_command(built[sizes[0]][0], "people", "remove")
        for k in range(args.runs):
            c.progress(f"round {k + 1} of {args.runs}")
            for n in sizes[k % len(sizes) :] + sizes[: k % len(sizes)]:
                round_of_actions(*built[n][:1], n, built[n][1], k, results[n])
        for k in range(args.runs):
            for n in sizes[k % len(sizes) :] + sizes[: k % len(sizes)]:
                round_of_endings(built[n][0], built[n][1], k, results[n], remove)
    finally:
        if not args.keep:
            for root in roots.values():
                shutil.rmtree(root, ignore_errors=True)
    base = sizes[0]
    med = statistics.median
    print(f"{'action':<20}" + "".join(f"{n:>42,} people" for n in sizes))
    for name in results[base]:
        cells = []
        for n in sizes:
            got = results[n][name]
            cells.append(
                f"{med(x.seconds for x in got):5.2f} s {med(x.cpu for x in got):5.2f} cpu "
                f"{max(x.rss_mb for x in got):4.0f} MB {med(x.read_mb for x in got):5.1f} MB read"
                f" ({med(x.cmd_mb for x in got):5.2f} cmd)"
            )
        print(f"{name:<20}" + " | ".join(cells))
    summary = {}
    for n in sizes[1:]:
        for name, got in results[n].items():
            ref = results[base][name]
            ratio = med(x.seconds for x in got) / med(x.seconds for x in ref)
            cpu = med(x.cpu for x in got) / med(x.cpu for x in ref)
            summary[f"{name}@{n}"] = {"time": ratio, "cpu": cpu}
            print(
                f"{name}: {n:,} people / {base:,} people time ratio {ratio:.2f} (target <= 1.5), "
                f"cpu ratio {cpu:.2f}, RSS {max(x.rss_mb for x in got):.0f} MB, "
                f"read {med(x.read_mb for x in got):.1f} MB "
                f"({med(x.cmd_mb for x in got):.2f} MB by the command)"
            )
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
