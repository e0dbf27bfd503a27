"""Several algorithms and seeds on the same federation, one table.

Per run, the hospitals that count are the held-out ones when any are held out (unseen-site
few-shot), else every hospital (personalisation). In leave-one-hospital-out mode each hospital is
held out in turn and contributes its unseen-site score from its own fold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedmeta.config import ExperimentConfig, config_from_json, same_config
from fedmeta.data.sources import data_note, load_federation
from fedmeta.errors import FedMetaError
from fedmeta.data.hospital import Federation
from fedmeta import local_baseline, pooled_baseline
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.tuning.space import SearchSpace
from fedmeta.comparison_markdown import comparison_markdown
from fedmeta.paired import best_on_validation, paired_table
from fedmeta.tasks import Task, build_task

__all__ = ["BASELINES", "COMPARED", "PLAN", "claim_plan", "comparison_plan", "comparison_markdown", "family",
           "run_comparison"]

# Non-federated baselines: name in the table -> per-hospital metrics of a federation.
BASELINES: dict[str, Callable[[Federation, ExperimentConfig], dict[str, dict[str, Any]]]] = {
    "local": local_baseline.run_local_baseline,
    "pooled": pooled_baseline.run_pooled_baseline,  # centralised on the union of the train splits: not federated
}
# Name in the table -> meta.algorithm of the federated run (None: a baseline without federation).
COMPARED: dict[str, str | None] = {
    **{name: None for name in BASELINES},
    "fedavg": "fedavg",
    "fedmeta-maml": "maml",
    "fedmeta-fomaml": "fomaml",
    "fedmeta-reptile": "reptile",
    "fedmeta-metasgd": "metasgd",
    "fedmeta-anil": "anil",
    "fedmeta-protonet": "protonet",
    "fedmeta-matchingnet": "matchingnet",
    "fedmeta-relationnet": "relationnet",
    "fedprox": "fedprox",
    "ditto": "ditto",
    "fedrep": "fedrep",
    "perfedavg": "perfedavg",
}
BASELINE_SPACES: dict[str, SearchSpace] = {
    "local": local_baseline.SEARCH_SPACE,
    "pooled": pooled_baseline.SEARCH_SPACE,
}


def search_space(name: str) -> SearchSpace:
    """What ``fedmeta tune`` may change for a compared name, as its definition declares it."""
    if name in BASELINES:
        return BASELINE_SPACES[name]
    return get_algorithm(COMPARED[name]).search_space  # type: ignore[arg-type]


def all_search_keys() -> frozenset[str]:
    return frozenset(p.key for name in COMPARED for p in search_space(name))


def folds(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """``[("", cfg)]``, or in leave-one-out mode one plain held-out config per hospital."""
    if not cfg.data.leave_one_out:
        return [("", cfg)]
    names = load_federation(cfg).names
    return [(h, cfg.model_copy(update={"data": cfg.data.model_copy(update={"held_out": [h], "leave_one_out": False})}))
            for h in names]


def counted(per_hospital: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The hospitals a run is judged on: the held-out ones when any are held out, else all."""
    held = {h: m for h, m in per_hospital.items() if m["role"] == "held-out"}
    return held or per_hospital


def summary_keys(task: Task) -> tuple[str, ...]:
    """What a comparison reports per seed: mean and worst-site primary metric, mean of the others."""
    return (f"mean_{task.primary}", f"worst_{task.primary}", *(f"mean_{k}" for k in task.metric_names[1:]))


def _summary(per_hospital: dict[str, dict[str, Any]], task: Task) -> dict[str, Any]:
    primary = {h: m[task.primary] for h, m in per_hospital.items()}
    worst = min(primary, key=primary.__getitem__)
    return {
        "hospitals": per_hospital,
        f"mean_{task.primary}": float(np.mean(list(primary.values()))),
        f"worst_{task.primary}": primary[worst],
        "worst_site": worst,
        **{f"mean_{k}": float(np.mean([m[k] for m in per_hospital.values()])) for k in task.metric_names[1:]},
    }


# Each finished (algorithm, seed, fold) is kept here, so that ``compare --resume`` skips it.
UNITS = "units"
PLAN = "plan.json"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def comparison_plan(cfg: ExperimentConfig, algorithms: list[str], seeds: list[int], trials: int | None) -> dict:
    """What a comparison runs; a resumed one must run the same."""
    return {"config": json.loads(cfg.to_json()), "algorithms": algorithms, "seeds": seeds, "tune": trials}


def claim_plan(out_dir: Path, plan: dict[str, Any], resume: bool) -> None:
    """Record ``plan`` in a new comparison, or check that a resumed one ran the same."""
    path = out_dir / PLAN
    if not resume:
        _write_atomically(path, json.dumps(plan, indent=2) + "\n")
        return
    if not path.is_file():
        raise FedMetaError(f"--resume {out_dir}: no {PLAN} there; nothing to resume")
    before = json.loads(path.read_text(encoding="utf-8"))
    if same_config(json.dumps(before.get("config")), config_from_json(json.dumps(plan["config"]))):
        before["config"] = plan["config"]
    # More algorithms or seeds than before, or the same in another order: the finished units stay,
    # the others run (paired with them) in the order given now.
    extended = False
    for key in ("algorithms", "seeds"):
        if set(before.get(key, [])) <= set(plan[key]) and before.get(key) != plan[key]:
            before[key], extended = plan[key], True
    differ = [k for k in plan if before.get(k) != plan[k]]
    if differ:
        shown = {"config": "config (or --set)", "tune": "--tune"}
        what = ", ".join(shown.get(k, f"--{k}") for k in differ)
        raise FedMetaError(f"--resume {out_dir}: that comparison ran with another {what}; resume with the same "
                           "config, --set and --tune, and its --algorithms and --seeds or more")
    if extended:
        _write_atomically(path, json.dumps(plan, indent=2) + "\n")


# Tunes one compared name for one (seed, fold) config into a directory: (best config, tune summary).
Tuner = Callable[[str, ExperimentConfig, Path], tuple[ExperimentConfig, dict[str, Any]]]


def _run_unit(algo: str, seed: int, fold: str, fold_cfg: ExperimentConfig, where: str, out_dir: Path,
              run_federated: Callable[[ExperimentConfig, Path], dict[str, Any]], tuner: Tuner | None) -> dict[str, Any]:
    """One (algorithm, seed, fold): tuned first when there is a tuner; its counted hospitals."""
    unit: dict[str, Any] = {}
    if tuner is not None:
        fold_cfg, summary = tuner(algo, fold_cfg, out_dir / "tuning" / algo / where)
        unit["tuning"] = {k: summary[k] for k in ("best", "completed", "pruned", "failed", "trials", "seconds")}
    missing: list[str] = []
    if algo in BASELINES:
        res = BASELINES[algo](load_federation(fold_cfg), fold_cfg)
    else:
        run_cfg = fold_cfg.model_copy(update={"meta": fold_cfg.meta.model_copy(update={"algorithm": COMPARED[algo]})})
        run = run_federated(run_cfg, out_dir / "runs" / algo / f"seed{seed}" / (f"fold-{fold}" if fold else ""))
        res = run["final"]
        missing = [h for h in run.get("final_missing", []) if not fold or h == fold]
    return {**unit, "hospitals": counted(res), "missing": missing}


def run_comparison(
    cfg: ExperimentConfig, algorithms: list[str], seeds: list[int], out_dir: Path,
    run_federated: Callable[[ExperimentConfig, Path], dict[str, Any]],
    announce: Callable[[str], None] = lambda line: None, tuner: Tuner | None = None,
) -> dict[str, Any]:
    """``algorithm -> seed -> per-hospital metrics`` plus mean/worst-site, and across-seed mean ± std.

    With a ``tuner``, every (algorithm, seed, fold) is first tuned on validation with the same budget
    and then run with its best config; what each tuning chose is kept in the table."""
    unknown = [a for a in algorithms if a not in COMPARED]
    if unknown:
        raise FedMetaError(f"--algorithms: unknown {unknown} (expected some of {', '.join(COMPARED)})")
    task = build_task(cfg.task)
    table: dict[str, Any] = {}
    n_folds = len(folds(cfg))
    total, done = len(algorithms) * len(seeds) * n_folds, 0
    for algo in algorithms:
        table[algo] = {"seeds": {}, **({"tuning": {}} if tuner else {})}
        for seed in seeds:
            seeded = cfg.model_copy(update={"seed": seed})
            per_hospital: dict[str, dict[str, Any]] = {}
            missing: list[str] = []
            for fold, fold_cfg in folds(seeded):
                done += 1
                where = f"seed{seed}" + (f"-fold-{fold}" if fold else "")
                unit_file = out_dir / UNITS / algo / f"{where}.json"
                line = f"[{done}/{total}] {algo}, seed {seed}" + (f", {fold} held out" if fold else "")
                if unit_file.is_file():  # finished before an interruption: kept as it was
                    announce(line + ": finished before, kept")
                    unit = json.loads(unit_file.read_text(encoding="utf-8"))
                else:
                    announce(line)
                    unit = _run_unit(algo, seed, fold, fold_cfg, where, out_dir, run_federated, tuner)
                    _write_atomically(unit_file, json.dumps(unit, indent=2) + "\n")
                if "tuning" in unit:
                    table[algo]["tuning"][where] = unit["tuning"]
                missing += unit["missing"]
                per_hospital.update(unit["hospitals"])
            table[algo]["seeds"][str(seed)] = {**_summary(per_hospital, task), "missing": missing}
        s = table[algo]["seeds"].values()
        for key in summary_keys(task):
            vals = [x[key] for x in s]
            table[algo][key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
    for algo, paired in paired_table(table, summary_keys(task)[:2]).items():
        table[algo]["paired"] = paired
    best_personalised = _pair_with_best_personalised(table, summary_keys(task)[:2])
    result = {
        "tuning_trials": next((t["trials"] for row in table.values() for t in row.get("tuning", {}).values()), 0),
        "mode": "leave-one-hospital-out" if cfg.data.leave_one_out else
                ("unseen hospitals" if cfg.data.held_out else "personalisation"),
        "seeds": seeds,
        "data_note": data_note(cfg),
        "metrics": list(task.metric_names),  # the first is the primary one
        "algorithms": table,
        "best_personalised": best_personalised,
        "config": json.loads(cfg.to_json()),
    }
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out_dir / "comparison.md").write_text(comparison_markdown(result), encoding="utf-8")
    return result


def family(name: str) -> str:
    """``baseline`` (local, pooled), ``federated`` (FedAvg), ``meta-learning`` or ``personalised-fl``."""
    algorithm = COMPARED[name]
    return "baseline" if algorithm is None else get_algorithm(algorithm).family


def _pair_with_best_personalised(table: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, Any] | None:
    """Each meta-learner against the personalised-FL baseline that validation ranks first (tuned
    comparisons only: the choice reads no test split), stored as ``paired_to_best_personalised``."""
    best = best_on_validation(table, [name for name in table if family(name) == "personalised-fl"])
    if best is None:
        return None
    name, score = best
    learners = [n for n in table if family(n) == "meta-learning"]
    for algo, paired in paired_table(table, metrics, reference=name, only=learners).items():
        table[algo]["paired_to_best_personalised"] = paired
    return {"name": name, "validation_score": score, "chosen_by": "mean best validation score of its tunings"}
