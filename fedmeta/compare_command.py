"""The ``fedmeta compare`` command: checks before anything runs, one Ray cluster for all its runs
(and tunings), the table on stdout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from fedmeta.config import ExperimentConfig, load_config
from fedmeta.errors import FedMetaError
from fedmeta.output_dir import claimed_output_dir

__all__ = ["add_compare_parser"]


def _check_seeds(seeds: list[int]) -> None:
    if bad := [s for s in seeds if s < 0]:
        raise FedMetaError(f"--seeds: {bad[0]} is negative (seeds are integers >= 0)")
    if dupes := [s for i, s in enumerate(seeds) if s in seeds[:i]]:
        raise FedMetaError(f"--seeds: {dupes[0]} is given more than once")


def _compare(args: argparse.Namespace, load: Callable[[argparse.Namespace], ExperimentConfig],
             default_out: Callable[[Path, str], Path]) -> None:
    cfg = load(args)
    from fedmeta.compare import COMPARED, folds, comparison_markdown, run_comparison
    from fedmeta.data.sources import load_federation
    from fedmeta.simulation import simulate

    unknown = [a for a in args.algorithms if a not in COMPARED]
    if unknown:
        raise FedMetaError(f"--algorithms: unknown {', '.join(unknown)} (expected some of {', '.join(COMPARED)})")
    _check_seeds(args.seeds)
    from fedmeta.privacy.preflight import check_run

    fed = load_federation(cfg)
    for meta_algorithm in {COMPARED[a] for a in args.algorithms} - {None}:  # each federated run's privacy plan
        check_run(cfg.model_copy(update={"meta": cfg.meta.model_copy(update={"algorithm": meta_algorithm})}), fed)
    if args.tune is not None:
        if args.tune < 1:
            raise FedMetaError(f"--tune: {args.tune} (expected at least 1 trial)")
        from fedmeta.tuning.protocol import tuning_config

        for _, fold_cfg in folds(cfg):  # a config that cannot be tuned fails before anything runs
            tuning_config(fold_cfg)
    out = Path(args.out) if args.out else default_out(Path(args.config), "compare")
    federated = any(COMPARED[a] for a in args.algorithms)
    from fedmeta.ray_session import local_ray_cluster

    announce = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with claimed_output_dir(out) as run_dir, (local_ray_cluster() if federated else nullcontext("")) as address:
        tuner = None
        if args.tune:
            from fedmeta.tuning.study import tune

            def tuner(name: str, fold_cfg: ExperimentConfig, where: Path) -> tuple[ExperimentConfig, dict]:
                where.mkdir(parents=True)
                summary = tune(fold_cfg, name, args.tune, where, ray_address=address, announce=announce)
                return load_config(where / "best.toml"), summary

        result = run_comparison(cfg, args.algorithms, args.seeds, run_dir,
                                run_federated=lambda c, d: simulate(c, d, progress=not args.quiet,
                                                                    ray_address=address),
                                announce=announce, tuner=tuner)
    print(comparison_markdown(result))
    print(f"comparison: {out}/comparison.json, {out}/comparison.md")


def add_compare_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None],
                       load: Callable[[argparse.Namespace], ExperimentConfig],
                       default_out: Callable[[Path, str], Path]) -> None:
    c = sub.add_parser("compare", help="run several algorithms and seeds on the same federation")
    common(c)
    c.add_argument("--algorithms", nargs="+",
                   default=["local", "fedavg", "fedmeta-maml", "fedmeta-fomaml", "fedmeta-reptile"])
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    c.add_argument("--tune", type=int, metavar="N", help="first tune every algorithm (and seed and fold) with N "
                   "trials on validation data, then run it with its best config")
    c.set_defaults(func=lambda args: _compare(args, load, default_out))
