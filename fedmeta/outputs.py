"""What a run leaves in its output directory: the resolved config, results.json, metrics.csv, the
final model and one PNG per metric (metric per hospital per round)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from fedmeta.config import ExperimentConfig
from fedmeta.data.sources import data_note
from fedmeta.history import RunHistory
from fedmeta.tasks import Task, build_task, metric_label

__all__ = ["summarise", "write_run_outputs", "plot_metric", "missed_rounds"]


def summarise(per_hospital: dict[str, dict[str, float]], roles: dict[str, str], task: Task) -> dict[str, Any]:
    """Mean and worst-site value of each of the task's metrics (``mean_auc``, ``worst_auc``, ...) and
    the worst site by the primary one, separately for training and held-out hospitals."""
    out: dict[str, Any] = {}
    for role in ("train", "held-out"):
        rows = {h: m for h, m in per_hospital.items() if roles.get(h) == role}
        if not rows:
            continue
        summary: dict[str, Any] = {"hospitals": len(rows)}
        for name in task.metric_names:
            values = [m[name] for m in rows.values()]
            summary |= {f"mean_{name}": float(np.mean(values)), f"worst_{name}": float(np.min(values))}
        summary["worst_site"] = min(rows, key=lambda h: rows[h][task.primary])
        out[role] = summary
    return out


def plot_metric(history: RunHistory, metric: str, path: Path | BinaryIO, title: str, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for hospital, role in history.hospitals.items():
        pts = [(r.round, r.eval[hospital][metric]) for r in history.rounds if hospital in r.eval]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, ls="-" if role == "train" else "--",
                    label=hospital + (" (held out)" if role != "train" else ""))
    ax.set_xlabel("round")
    ax.set_ylabel(f"{split} {metric_label(metric)} after few-shot adaptation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def missed_rounds(history: RunHistory) -> dict[str, list[dict[str, Any]]]:
    """Hospital -> the rounds it was sent work but contributed nothing, with the kind and reason."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in history.rounds:
        for h, m in sorted(r.missed.items()):
            out.setdefault(h, []).append({"round": r.round, **m})
    return out


def write_run_outputs(out_dir: Path, *, cfg: ExperimentConfig, history: RunHistory, model: nn.Module,
                      timings: dict[str, float], stop_reason: str = "", resumed_from_round: int = 0,
                      runtime: dict[str, Any] | None = None,
                      algorithm_state: dict[str, torch.Tensor] | None = None,
                      schema: dict[str, Any] | None = None, plots: bool = True) -> dict[str, Any]:
    """``algorithm_state``: what the algorithm learned besides the model's parameters (Meta-SGD's
    rates), saved as ``algorithm_state.pt`` next to ``model.pt``. ``schema``: what the hospitals'
    data looked like (``Shape.schema``), which a new hospital's data must match to use the model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")
    final = history.final_eval()
    task = build_task(cfg.task)
    results = {
        "algorithm": cfg.meta.algorithm,
        "seed": cfg.seed,
        "data_note": data_note(cfg),  # e.g. that the hospitals are simulated
        "metrics": list(task.metric_names),  # the first is the primary one
        "rounds_completed": sum(1 for r in history.rounds if r.aggregated),
        "stopped_early": stop_reason,
        "resumed_from_round": resumed_from_round,
        "missed_rounds": missed_rounds(history),
        "kept_round": history.kept_round or max((r.round for r in history.rounds if r.eval), default=0),
        "selection": "best validation round" if history.kept_round else "last round",
        "validation_score": {str(r.round): v for r in history.rounds if (v := history.round_validation(r.round)) is not None},
        "final": {h: {**m, "role": history.hospitals[h]} for h, m in sorted(final.items())},
        "final_missing": sorted(set(history.hospitals) - set(final)),
        "summary": summarise(final, history.hospitals, task),
        "timings": {**timings, "round_s": [r.seconds for r in history.rounds]},
        "history": history.to_dict(),
        "runtime": runtime or {},
        "schema": schema or {},
        "config": json.loads(cfg.to_json()),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "metrics.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        scored = [*task.metric_names, f"{task.primary}_unadapted", f"val_{task.primary}"]
        w.writerow(["round", "hospital", "role", *scored, "train_loss", "missed"])
        for r in history.rounds:
            for h, role in history.hospitals.items():
                if h in r.eval or h in r.train or h in r.missed:
                    ev = r.eval.get(h, {})
                    w.writerow([r.round, h, role, *(ev.get(k, "") for k in scored),
                                r.train.get(h, {}).get("train-loss", ""),
                                ": ".join(r.missed[h].values()) if h in r.missed else ""])
    torch.save(model.state_dict(), out_dir / "model.pt")
    if algorithm_state:
        torch.save(algorithm_state, out_dir / "algorithm_state.pt")
    title = f"{cfg.meta.algorithm}, seed {cfg.seed}"
    for name in task.metric_names if plots else ():
        plot_metric(history, name, out_dir / f"{name}_per_round.png", title, cfg.eval.split)
    return results
