"""The ``fedmeta tune`` command: arguments, checks before anything is written, the summary."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fedmeta.errors import FedMetaError
from fedmeta.tasks import build_task, metric_label

__all__ = ["add_tune_parser"]


def _tune(args: argparse.Namespace, load: Callable[[argparse.Namespace], object],
          default_out: Callable[[Path, str], Path]) -> None:
    from fedmeta.compare import BASELINES, COMPARED
    from fedmeta.config import ExperimentConfig, with_settings
    from fedmeta.output_dir import claimed_output_dir
    from fedmeta.privacy.preflight import check_run
    from fedmeta.tuning.protocol import tuning_config
    from fedmeta.tuning.study import STUDY_DB, tune

    cfg = load(args)
    assert isinstance(cfg, ExperimentConfig)
    if args.algorithm not in COMPARED:
        raise FedMetaError(f"--algorithm: unknown {args.algorithm!r} (expected one of {', '.join(COMPARED)})")
    if args.trials < 1:
        raise FedMetaError(f"--trials: {args.trials} (expected at least 1)")
    base = tuning_config(cfg)  # bad data or a config that cannot be tuned fails here
    if args.algorithm not in BASELINES:
        from fedmeta.data.sources import load_federation

        run = with_settings(base, {"meta.algorithm": COMPARED[args.algorithm]}, "tune")
        check_run(run, load_federation(run))
    if args.resume:
        out = Path(args.resume)
        if not (out / STUDY_DB).is_file():
            raise FedMetaError(f"--resume {args.resume}: no {STUDY_DB} there; nothing to resume")
        if args.out and Path(args.out).resolve() != out.resolve():
            raise FedMetaError(f"--out {args.out}: a resumed tune writes into the directory it resumes ({args.resume})")
    else:
        out = Path(args.out) if args.out else default_out(Path(args.config), f"tune-{args.algorithm}")
    with claimed_output_dir(out, resume=bool(args.resume), flag="--resume" if args.resume else "--out",
                            resumable=STUDY_DB) as run_dir:
        summary = tune(cfg, args.algorithm, args.trials, run_dir, resume=bool(args.resume),
                       ray_address=args.ray_address or "")
    best = summary["best"]
    label = metric_label(build_task(cfg.task).primary)
    print(f"{args.algorithm}: best validation {label} {best['validation_score']:.4f} (trial {best['trial']}; "
          f"{summary['completed']} complete, {summary['pruned']} pruned, {summary['failed']} failed of "
          f"{summary['trials']})")
    for key, value in sorted(best["settings"].items()):
        print(f"  {key} = {value}")
    print(f"best config: {out}/best.toml; trials: {out}/trials.csv, {out}/history.png")


def add_tune_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None],
                    load: Callable[[argparse.Namespace], object], default_out: Callable[[Path, str], Path]) -> None:
    t = sub.add_parser("tune", help="choose an algorithm's hyper-parameters on validation data (Optuna)")
    common(t)
    t.add_argument("--algorithm", required=True, metavar="NAME",
                   help="as in compare --algorithms: local, pooled, fedavg, fedmeta-maml, ...")
    t.add_argument("--trials", type=int, required=True, help="number of trials (all of them, with --resume)")
    t.add_argument("--resume", metavar="OUT_DIR", help="continue the interrupted tune in OUT_DIR")
    t.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="run the trials on this Ray cluster (default: one started here for the whole tune)")
    t.set_defaults(func=lambda args: _tune(args, load, default_out))
