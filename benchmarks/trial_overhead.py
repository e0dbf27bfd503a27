"""What a short simulation costs beyond its computation: a tuning trial's run on a shared Ray
cluster with fresh hospital actors (a new Ray job each time) against the same run on the actors a
previous run kept (``fedmeta.flower.kept_actors``), alternately in one run, plots off on both sides.

    .venv/bin/python benchmarks/trial_overhead.py [CONFIG] [--data-dir DIR] [--rounds 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedmeta.config import load_config
from fedmeta.flower.kept_actors import kept_actors
from fedmeta.ray_session import local_ray_cluster
from fedmeta.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "ci.toml"))
    ap.add_argument("--data-dir")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(args.config, ["privacy.mode='none'", f"federation.rounds={args.rounds}"], args.data_dir)
    times: dict[str, list[float]] = {"fresh actors": [], "kept actors": []}

    def timed(out: Path) -> float:
        t0 = time.perf_counter()
        simulate(cfg, out, progress=False, ray_address=address, plots=False)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp, local_ray_cluster() as address:
        for i in range(args.repeats):
            times["fresh actors"].append(timed(Path(tmp) / f"fresh-{i}"))
            with kept_actors(address):
                timed(Path(tmp) / f"starts-{i}")  # starts the actors the next run keeps
                times["kept actors"].append(timed(Path(tmp) / f"kept-{i}"))
    print(f"{Path(args.config).name}, {args.rounds} round(s), median of {args.repeats}:")
    for mode, ts in times.items():
        print(f"  {mode:<13} {statistics.median(ts):6.2f} s per simulation")
    ratio = statistics.median(times["fresh actors"]) / statistics.median(times["kept actors"])
    print(f"  fresh / kept  {ratio:6.1f}x")


if __name__ == "__main__":
    main()
