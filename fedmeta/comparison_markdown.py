"""The Markdown page of a comparison (``comparison.md``): the table, the paired differences to
FedAvg + fine-tune and to the personalised-FL baseline validation ranks first, what tuning chose,
and the per-hospital scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmeta.tasks import metric_label

__all__ = ["comparison_markdown"]


def _label(name: str) -> str:
    return f"{name} (centralised, not federated)" if name == "pooled" else name


def _interval(d: dict[str, Any]) -> str:
    if d["seeds"] < 2:
        return f"{d['mean']:+.3f} (one seed: no interval)"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _paired_lines(title: str, column: str, paired: dict[str, Any], keys: tuple[str, ...], p: str) -> list[str]:
    """A table of paired differences (mean and worst site) under its title."""
    return ["", title, "", f"| {column} | Δ mean {p} | Δ worst-site {p} |", "|---|---|---|",
            *(f"| {name} | " + " | ".join(_interval(d[m]) for m in keys) + " |" for name, d in paired.items())]


def _tuning_lines(result: dict[str, Any]) -> list[str]:
    tuned = {name: row["tuning"] for name, row in result["algorithms"].items() if row.get("tuning")}
    if not tuned:
        return ["", "Not tuned: every algorithm ran with the config's settings."]
    lines = ["", f"Tuned on validation only ({result['tuning_trials']} trials per algorithm, seed and fold; Optuna "
             f"TPE, median pruner): the mean best validation {metric_label(result['metrics'][0])}, and what the first "
             "tuning chose (all of them in comparison.json).", "",
             f"| algorithm | validation {metric_label(result['metrics'][0])} | chosen settings |", "|---|---|---|"]
    for name, runs in tuned.items():
        first = next(iter(runs.values()))["best"]
        val = np.mean([r["best"]["validation_score"] for r in runs.values()])
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(first["settings"].items()))
        lines.append(f"| {name} | {val:.3f} | {chosen} |")
    return lines


def comparison_markdown(result: dict[str, Any]) -> str:
    algos = result["algorithms"]
    primary, *others = result["metrics"]
    p = metric_label(primary)
    keys = (f"mean_{primary}", f"worst_{primary}", *(f"mean_{k}" for k in others))
    lines = [f"Note: {result['data_note']}.", ""] if result.get("data_note") else []
    lines += [
        f"Mode: {result['mode']}; seeds {', '.join(map(str, result['seeds']))}; "
        f"{p} after few-shot adaptation on each hospital's test split (mean ± std over seeds).",
        "",
        "| " + " | ".join(["algorithm", f"mean {p}", f"worst-site {p}", *(f"mean {metric_label(k)}" for k in others)])
        + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, row in algos.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in keys]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    paired = {name: row["paired"] for name, row in algos.items() if "paired" in row}
    if paired:
        reference = next(iter(paired.values()))["reference"]
        lines += _paired_lines(f"Difference to {reference}, paired by seed (mean [95% interval over seeds]; an "
                               "interval that excludes 0 is a difference these seeds support):", "algorithm",
                               paired, keys[:2], p)
    best = result.get("best_personalised")
    if best:
        lines += _paired_lines(
            f"Difference to {best['name']}, the personalised-FL baseline that validation ranks first (mean best "
            f"validation {p} {best['validation_score']:.3f}; no test split read to choose it), paired by seed:",
            "meta-learner", {name: row["paired_to_best_personalised"] for name, row in algos.items()
                             if "paired_to_best_personalised" in row}, keys[:2], p)
    lines += _tuning_lines(result)
    missing = [f"{name} seed {seed}: {', '.join(s['missing'])}" for name, row in algos.items()
               for seed, s in row["seeds"].items() if s.get("missing")]
    if missing:
        lines += ["", "No final score (the model diverged at these hospitals; left out of mean and worst): "
                  + "; ".join(missing)]
    hospitals = sorted({h for row in algos.values() for s in row["seeds"].values() for h in s["hospitals"]})
    lines += ["", f"Per hospital ({p}, mean over seeds):", "",
              "| algorithm | " + " | ".join(hospitals) + " |", "|---" * (len(hospitals) + 1) + "|"]
    for name, row in algos.items():
        cells = []
        for h in hospitals:
            vals = [s["hospitals"][h][primary] for s in row["seeds"].values() if h in s["hospitals"]]
            cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
