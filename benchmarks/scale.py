"""Wall time and peak memory of ``fedmeta simulate`` as the federation grows.

Each size runs ``configs/default.toml`` with ``data.synthetic.hospitals = N``, evaluation only after
the last round, as a separate ``fedmeta simulate`` process; peak memory is the largest sum of the
resident memory of that process and every process it started (Ray's included, read from Linux's
/proc), sampled every 0.5 s.

    .venv/bin/python benchmarks/scale.py [--hospitals 10 100 1000] [--rounds 20] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    parent, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid], rss[pid] = int(fields[1]), int(fields[21]) * PAGE
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier += [child for child, up in parent.items() if up == pid]
    return total


def run(hospitals: int, rounds: int, overrides: list[str], out: Path) -> tuple[float, float, int]:
    """(wall seconds, peak GB, exit code) of one simulate."""
    args = [sys.executable, "-m", "fedmeta.cli", "simulate", str(ROOT / "configs" / "default.toml"), "--quiet",
            "--set", f"data.synthetic.hospitals={hospitals}", "--set", f"federation.rounds={rounds}",
            "--set", f"eval.every={rounds}", "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stderr.read()[-2000:] if proc.stderr else "", file=sys.stderr)
    return wall, peak / 2**30, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hospitals", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    print(f"fedmeta simulate configs/default.toml, {args.rounds} rounds, evaluation after the last "
          f"{' '.join(args.set)}".rstrip(), flush=True)
    print(f"  {'hospitals':>9} {'wall':>10} {'peak memory':>12}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.hospitals:
            wall, peak, code = run(n, args.rounds, args.set, Path(tmp) / f"run-{n}")
            status = "" if code == 0 else f"  (exit {code})"
            print(f"  {n:>9} {int(wall // 60):>3} min {wall % 60:4.1f} s {peak:>9.2f} GB{status}", flush=True)


if __name__ == "__main__":
    main()
