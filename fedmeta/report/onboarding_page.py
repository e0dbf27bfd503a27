"""The onboarding report as a page a hospital's clinical team can read (``report.html``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmeta.report.figures import feature_attribution_figure, reliability_figure, saliency_figure
from fedmeta.report.privacy_section import spend_table
from fedmeta.report.html import facts, figure, page, paragraph, table
from fedmeta.tasks import metric_label

__all__ = ["onboarding_page"]

_EXPLAINED = {
    "global": "the federation's model as it came, not adapted",
    "adapted": "adapted on this hospital's labelled cases with the run's algorithm",
    "adapted, temperature-scaled": "the adapted model with a temperature fitted on the same labelled cases",
    "local only": "trained on this hospital's labelled cases alone (no federation)",
}


def _interval(m: dict[str, float]) -> str:
    if m["low"] != m["low"]:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def _metric_table(models: dict[str, dict[str, dict[str, float]]], names: list[str]) -> str:
    return table(["model", *[metric_label(n) for n in names]],
                 [[name, *[_interval(m[n]) if n in m else "–" for n in names]] for name, m in models.items()])


def _per_class(models: dict[str, dict[str, dict[str, float]]], measured: list[str]) -> str:
    """Multi-class: each class's one-vs-rest AUC and recall (sensitivity), per model."""
    classes = sorted({int(n.rsplit("_", 1)[1]) for n in measured if n.startswith(("auc_class_", "recall_class_"))})
    if not classes:
        return ""
    rows = [[name, c, *[_interval(m[f"{k}_class_{c}"]) if f"{k}_class_{c}" in m else "–" for k in ("auc", "recall")]]
            for name, m in models.items() for c in classes]
    return paragraph("Per class:") + table(["model", "class", "one-vs-rest AUC", "recall (sensitivity)"], rows)


def _summary(rep: dict[str, Any]) -> str:
    primary, models = rep["run"]["primary"], rep["models"]
    adapted = models["adapted"][primary]
    lines = [f"After adapting on {rep['hospital']['adapted_on']} labelled cases, the model reaches "
             f"{metric_label(primary)} {_interval(adapted)} on this hospital's other "
             f"{rep['hospital']['evaluated']} cases (95% bootstrap interval)."]
    for other in ("global", "local only"):
        if other in models:
            d = rep["differences"][f"adapted − {other}"]
            verdict = ("a difference these cases support" if d["low"] > 0 or d["high"] < 0
                       else "no difference these cases can show")
            lines.append(f"{_EXPLAINED[other].capitalize()}: {_interval(models[other][primary])}; adapted minus "
                         f"this, paired by case: {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], {verdict}.")
    if "global" not in models:
        lines.append(f"The {rep['run']['algorithm']} model needs labelled cases to predict at all: there is no "
                     "'before adaptation'.")
    return "".join(paragraph(t) for t in lines)


def _calibration(rep: dict[str, Any]) -> str:
    if not rep["calibration"]:
        return paragraph("A survival model gives risk scores, not probabilities: calibration is not assessed.", "note")
    binary = rep["run"]["task"] == "binary"
    what = "probability of the outcome" if binary else "probability of the predicted class"
    body = _metric_table(rep["models"], ["brier", "ece"])
    if rep["temperature"] is not None:
        body += paragraph(f"Temperature fitted on the labelled cases: T = {rep['temperature']:.3f} (T > 1 softens "
                          "the predictions). It is fitted on the cases the model adapted on, so it can be optimistic.",
                          "note")
    return body + figure(reliability_figure(rep["calibration"], what), "reliability diagram") + paragraph(
        "Reliability: within each bin of predicted probability, how often the outcome was observed; on the "
        "dotted line the predictions mean what they say. ECE: expected calibration error (10 bins).", "note")


def _attribution(rep: dict[str, Any]) -> str:
    att = rep["attribution"]
    intro = paragraph(f"{att['method'].capitalize()} on {att['patients']} evaluated patients (Captum): how much each "
                      "input moves the prediction, averaged in absolute value. Where the adapted model leans on other "
                      "inputs than the global one, this hospital differs from the federation.", "note")
    if "features" in att:
        rows = att["features"]
        names = [r["feature"] for r in rows]
        after = np.array([r["adapted"] for r in rows])
        before = np.array([r["global"] for r in rows]) if rows and "global" in rows[0] else None
        ranked = sorted(rows, key=lambda r: -abs(r["adapted"] - r.get("global", 0.0)))[:8]
        changes = table(["feature", "global", "adapted", "change"],
                        [[r["feature"], r.get("global", float("nan")), r["adapted"],
                          r["adapted"] - r.get("global", float("nan"))] for r in ranked]) if before is not None else ""
        return intro + figure(feature_attribution_figure(names, before, after), "feature attributions") + (
            paragraph("Largest changes:") + changes if changes else "")
    maps = {("global model" if k == "global" else k): v for k, v in rep["_figures"]["maps"].items()}
    return intro + figure(saliency_figure(maps), "saliency maps")


def _privacy(rep: dict[str, Any]) -> str:
    p = rep["privacy"]
    body = paragraph(p["note"])
    if p["hospitals"]:
        body += spend_table(p["hospitals"])
    body += paragraph("This hospital's data did not leave the site: it was read and used on this machine only; "
                      "onboarding opens no connection and sends nothing, so it spends no privacy budget.", "ok")
    return body


def onboarding_page(rep: dict[str, Any]) -> str:
    hosp, run, settings = rep["hospital"], rep["run"], rep["settings"]
    primary = run["primary"]
    measured = list(next(iter(rep["models"].values())))
    names = [n for n in measured if not n.startswith(("brier", "ece", "auc_class_", "recall_class_"))]
    about = facts([
        ["file", hosp["file"]], ["cases", hosp["cases"]],
        ["cases per class", ", ".join(f"{c}: {n}" for c, n in enumerate(hosp["per_class"]))],
        ["labelled cases adapted on", f"{hosp['adapted_on']} ({settings['shots']} per class, seed {settings['seed']})"],
        ["cases evaluated", hosp["evaluated"]], ["normalisation", hosp["normalisation"]],
        ["run", f"{run['dir']} ({run['algorithm']}, seed {run['seed']}, round {run['kept_round']} kept: "
                f"{run['selection']})"],
        ["adaptation", f"{settings['inner_steps']} steps at rate {settings['inner_lr']}"],
    ] + ([["columns ignored", ", ".join(hosp["ignored_columns"])]] if hosp["ignored_columns"] else [])
      + ([["note", run["data_note"]]] if run["data_note"] else []))
    models = "".join(paragraph(f"{name}: {_EXPLAINED[name]}.", "note") for name in rep["models"])
    sections = [
        ("Summary", _summary(rep)),
        ("This hospital and the run", about),
        (f"Performance (95% bootstrap intervals, {settings['bootstrap_resamples']} resamples within each class)",
         _metric_table(rep["models"], [primary, *[n for n in names if n != primary]]) + models
         + _per_class(rep["models"], measured)),
        ("Calibration", _calibration(rep)),
        ("What the adaptation changed", _attribution(rep)),
        ("Privacy", _privacy(rep)),
    ]
    return page(f"Onboarding {hosp['file'].rsplit('/', 1)[-1]} with {run['algorithm']}", sections)
