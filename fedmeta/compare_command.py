"""The ``fedmeta compare`` command: checks before anything runs, one Ray cluster for all its runs
(and tunings), the table on stdout."""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _clear_unfinished(where: Path, resumable: str) -> bool:
    """Before a unit of a resumed comparison runs again: True when ``where`` can continue from its
    ``resumable`` file; else remove what an interrupted attempt left, unless it holds privacy ledgers."""
    if (where / resumable).is_file():
        return True
    if where.exists():
        if any(files and "ledgers" in Path(root).parts for root, _, files in os.walk(where)):
            raise FedMetaError(f"--resume: {where} holds privacy ledgers but no {resumable} to continue from; "
                               "move it elsewhere (the ledgers record privacy already spent) and resume again")
        shutil.rmtree(where)
    return False


def _compare(args: argparse.Namespace, load: Callable[[argparse.Namespace], ExperimentConfig],
             default_out: Callable[[Path, str], Path]) -> None:
    cfg = load(args)
    from fedmeta.compare import COMPARED, PLAN, claim_plan, comparison_plan, folds, comparison_markdown, run_comparison
    from fedmeta.data.sources import load_federation
    from fedmeta.checkpoint import CHECKPOINT
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
    if args.resume:
        out = Path(args.resume)
        if not (out / PLAN).is_file():
            raise FedMetaError(f"--resume {args.resume}: no {PLAN} there; nothing to resume")
        if args.out and Path(args.out).resolve() != out.resolve():
            raise FedMetaError(f"--out {args.out}: a resumed comparison writes into the directory it resumes "
                               f"({args.resume})")
    else:
        out = Path(args.out) if args.out else default_out(Path(args.config), "compare")
    federated = any(COMPARED[a] for a in args.algorithms)
    from fedmeta.flower.kept_actors import kept_actors
    from fedmeta.ray_session import local_ray_cluster

    announce = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    plan = comparison_plan(cfg, args.algorithms, args.seeds, args.tune)
    with claimed_output_dir(out, resume=bool(args.resume), flag="--resume" if args.resume else "--out",
                            resumable=PLAN) as run_dir:
        claim_plan(run_dir, plan, resume=bool(args.resume))
        with local_ray_cluster() if federated else nullcontext("") as address, kept_actors(address):
            tuner = None
            if args.tune:
                from fedmeta.tuning.study import STUDY_DB, tune

                def tuner(name: str, fold_cfg: ExperimentConfig, where: Path) -> tuple[ExperimentConfig, dict]:
                    again = _clear_unfinished(where, STUDY_DB)
                    where.mkdir(parents=True, exist_ok=True)
                    summary = tune(fold_cfg, name, args.tune, where, resume=again, ray_address=address,
                                   announce=announce)
                    return load_config(where / "best.toml"), summary

            def run_federated(run_cfg: ExperimentConfig, where: Path) -> dict:
                if (where / "results.json").is_file():  # finished just before the interruption
                    return json.loads((where / "results.json").read_text(encoding="utf-8"))
                again = _clear_unfinished(where, CHECKPOINT)
                return simulate(run_cfg, where, progress=not args.quiet, resume=again, ray_address=address)

            result = run_comparison(cfg, args.algorithms, args.seeds, run_dir, run_federated=run_federated,
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
    c.add_argument("--resume", metavar="OUT_DIR", help="continue the interrupted comparison in OUT_DIR (same "
                   "config and arguments): finished runs are kept, an interrupted tuning or run continues")
    c.set_defaults(func=lambda args: _compare(args, load, default_out))
