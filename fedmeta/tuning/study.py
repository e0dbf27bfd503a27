"""``fedmeta tune``: an Optuna study (TPE sampler, median pruner on the per-round validation score)
stored in SQLite, so that an interrupted tune continues with ``--resume``.

Outputs in the tune's directory: ``best.toml`` (a complete config for ``simulate`` and ``compare``),
``trials.csv``, ``history.png`` (the optimisation history), ``tune.json`` (the summary) and
``trials/NNNN/`` (each federated trial's run). All federated trials share one Ray cluster.
"""

from __future__ import annotations

import csv
import json
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any


from fedmeta.config import ExperimentConfig, config_toml, same_config, with_settings
from fedmeta.errors import FedMetaError
from fedmeta.tuning.protocol import INTERRUPTED, TrialFailed, mean_curve, tuning_config, validation_curve
from fedmeta.tuning.space import resolve_space, suggest
from fedmeta.tasks import build_task, metric_label

__all__ = ["tune", "STUDY_DB"]

STUDY_DB = "study.db"


def _announce(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _open_study(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool) -> Any:
    import optuna

    from fedmeta.tuning.sampler import TrialSeededTPE

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{out_dir / STUDY_DB}"
    study = optuna.create_study(
        study_name="fedmeta-tune", storage=storage, direction="maximize", load_if_exists=resume,
        sampler=TrialSeededTPE(cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=cfg.tune.warmup_rounds))
    if not resume:
        study.set_user_attr("algorithm", name)
        study.set_user_attr("config", cfg.to_json())
        return study
    if study.user_attrs.get("algorithm") != name or not same_config(study.user_attrs.get("config", ""), cfg):
        raise FedMetaError(f"--resume {out_dir}: that study tuned {study.user_attrs.get('algorithm')!r} with another "
                           "config; resume with the same algorithm and config")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", INTERRUPTED)  # killed mid-trial: run again
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return study


def _can_shorten(cfg: ExperimentConfig) -> bool:
    """Whether the tuned rounds may replace federation.rounds: not when sigma is calibrated to them."""
    return cfg.privacy.mode == "none" or cfg.privacy.noise_multiplier > 0


def tune(cfg: ExperimentConfig, name: str, trials: int, out_dir: Path, *, resume: bool = False,
         ray_address: str = "", announce: Callable[[str], None] = _announce) -> dict[str, Any]:
    """Tune compared method ``name`` (``local``, ``fedavg``, ``fedmeta-maml``, ...) on validation."""
    import optuna

    from fedmeta.compare import BASELINES, COMPARED, all_search_keys, search_space
    from fedmeta.flower.kept_actors import kept_actors
    from fedmeta.ray_session import local_ray_cluster

    if name not in COMPARED:
        raise FedMetaError(f"--algorithm: unknown {name!r} (expected one of {', '.join(COMPARED)})")
    params, fixed = resolve_space(search_space(name), cfg, name, all_search_keys())
    bases = [tuning_config(cfg, draw) for draw in range(cfg.tune.validation_draws)]
    with_settings(bases[0], fixed, "tune.space")  # a fixed value that cannot run fails before any trial
    study = _open_study(cfg, name, out_dir, resume)
    done = [t for t in study.trials if t.state.is_finished() and t.user_attrs.get("error") != INTERRUPTED]
    t0 = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        values = suggest(params, fixed, trial)
        trial.set_user_attr("settings", values)
        pruned: list[int] = []

        def report(server_round: int, auc: float) -> bool:
            trial.report(auc, server_round)
            if trial.should_prune():
                pruned.append(server_round)
            return bool(pruned)

        def ignore(server_round: int, auc: float) -> bool:
            return False

        curves, pairs = [], []
        try:
            for draw, base in enumerate(bases):  # the pruner watches the first draw
                trial_cfg = with_settings(base, values, f"trial {trial.number}")
                run_dir = out_dir / "trials" / f"{trial.number:04d}" / (f"draw-{draw}" if len(bases) > 1 else "")
                curve, compared = validation_curve(name, trial_cfg, run_dir, ray_address=address,
                                                   on_validation=ignore if draw else report)
                curves.append(curve)
                pairs.append(compared)
                if pruned:
                    trial.set_user_attr("pruned_round", pruned[0])
                    raise optuna.TrialPruned(f"pruned after round {pruned[0]}")
            score, best_round = mean_curve(curves, pairs)
        except (FedMetaError, TrialFailed) as err:
            trial.set_user_attr("error", str(err))
            raise TrialFailed(str(err)) from None
        trial.set_user_attr("best_round", best_round)
        return score

    counted = [len(done)]  # an interrupted trial run again has a number of its own; it is counted once

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        counted[0] += 1
        value = f"validation {label} {trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.PRUNED:
            value = f"pruned after round {trial.user_attrs.get('pruned_round', '?')}"
        if trial.state == optuna.trial.TrialState.FAIL:
            value += f": {trial.user_attrs.get('error', '')}"
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        secs = (trial.datetime_complete - trial.datetime_start).total_seconds()
        announce(f"{name} trial {counted[0]}/{trials}: {value}; {best}; {secs:.1f}s")

    label = metric_label(build_task(cfg.task).primary)
    federated = name not in BASELINES
    if federated and cfg.privacy.mode != "none":
        announce(f"privacy: each of the {trials} trials is a separate {cfg.privacy.mode}-level DP training on the same "
                 "records, with its own ledger under trials/; their epsilons add up and no single ledger holds "
                 "the sum (docs/tuning.md)")
    remaining = max(0, trials - len(done))
    if resume:
        announce(f"{name}: {len(done)} of {trials} trials already done")
    with (local_ray_cluster() if federated and not ray_address and remaining else nullcontext(ray_address) as address,
          kept_actors(address if federated and remaining else "")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.optimize(objective, n_trials=remaining, catch=(TrialFailed,), callbacks=[progress])
    return _write_outputs(study, cfg, name, out_dir, trials, time.perf_counter() - t0)


def _write_outputs(study: Any, cfg: ExperimentConfig, name: str, out_dir: Path, trials: int,
                   seconds: float) -> dict[str, Any]:
    import optuna

    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise FedMetaError(f"tune {name}: no trial completed (see {out_dir / 'trials.csv'})")
    _write_trials_csv(study, out_dir / "trials.csv")
    best = study.best_trial
    settings = dict(best.user_attrs["settings"])
    best_round = int(best.user_attrs.get("best_round", 0))
    if best_round and _can_shorten(cfg):
        settings["federation.rounds"] = best_round
    best_cfg = with_settings(cfg, settings, "best.toml")
    if cfg.tune.refit and cfg.eval.keep == "last" and cfg.eval.split == "test":
        best_cfg = with_settings(best_cfg, {"data.validation_fraction": 0.0}, "best.toml")
    (out_dir / "best.toml").write_text(config_toml(best_cfg), encoding="utf-8")
    _plot_history(study, out_dir / "history.png", name, metric_label(build_task(cfg.task).primary))
    states = [t.state.name.lower() if t.user_attrs.get("error") != INTERRUPTED else INTERRUPTED
              for t in study.trials]
    summary = {"algorithm": name, "trials": trials, "completed": states.count("complete"),
               "pruned": states.count("pruned"), "failed": states.count("fail"),
               "best": {"trial": best.number, "validation_score": best.value, "settings": settings,
                        "best_round": best_round},
               "seconds": seconds, "config": json.loads(best_cfg.to_json())}
    (out_dir / "tune.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_trials_csv(study: Any, path: Path) -> None:
    keys = sorted({k for t in study.trials for k in t.user_attrs.get("settings", {})})
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", "state", "validation_score", "best_round", "seconds", *keys, "error"])
        for t in study.trials:
            secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            s = t.user_attrs.get("settings", {})
            w.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                        t.user_attrs.get("best_round", ""), secs, *[s.get(k, "") for k in keys],
                        t.user_attrs.get("error", "")])


def _plot_history(study: Any, path: Path, name: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = plot_optimization_history(study, target_name=f"validation {label}")
    ax.set_title(f"{name}: validation {label} per trial")
    ax.legend(loc="lower right", fontsize=8)
    ax.figure.set_size_inches(7, 4.2)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
