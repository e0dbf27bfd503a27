"""``fedmeta report RUN_DIR``: one page for a whole run — the primary metric per hospital per round,
each hospital's final metrics with the worst site, each hospital's privacy spend against its cap,
and the rounds hospitals missed, with why."""

from __future__ import annotations

import io
from typing import Any

from fedmeta.finished_run import FinishedRun
from fedmeta.history import RunHistory
from fedmeta.outputs import plot_metric
from fedmeta.report.figures import epsilon_figure
from fedmeta.report.privacy_section import privacy_spend, spend_table
from fedmeta.report.html import facts, figure, page, paragraph, png, table
from fedmeta.tasks import metric_label

__all__ = ["run_report", "run_page"]


def run_report(run: FinishedRun) -> dict[str, Any]:
    """What ``report.json`` holds: the run's summary, final metrics, privacy spend and missed rounds."""
    res = run.results
    return {
        "run": {"dir": str(run.path), "algorithm": res["algorithm"], "seed": res["seed"],
                "rounds": run.cfg.federation.rounds, "rounds_completed": res["rounds_completed"],
                "stopped_early": res.get("stopped_early", ""), "kept_round": res.get("kept_round"),
                "selection": res.get("selection"), "data_note": res.get("data_note", ""),
                "split": run.cfg.eval.split, "shots": run.cfg.eval.shots},
        "metrics": res["metrics"],
        "final": res["final"],
        "final_missing": res.get("final_missing", []),
        "summary": res["summary"],
        "privacy": privacy_spend(run),
        "missed_rounds": res.get("missed_rounds", {}),
    }


def _curves(run: FinishedRun, primary: str) -> str:
    history = RunHistory.from_dict(run.results["history"])
    buf = io.BytesIO()
    plot_metric(history, primary, buf, f"{run.results['algorithm']}, seed {run.results['seed']}", run.cfg.eval.split)
    return png(buf.getvalue(), f"{primary} per round")


def run_page(rep: dict[str, Any], run: FinishedRun) -> str:
    r, metrics = rep["run"], rep["metrics"]
    primary = metrics[0]
    about = facts([
        ["algorithm", r["algorithm"]], ["seed", r["seed"]],
        ["rounds", f"{r['rounds_completed']} of {r['rounds']} completed"
                   + (f" (stopped early: {r['stopped_early']})" if r["stopped_early"] else "")],
        ["model kept", f"round {r['kept_round']} ({r['selection']})"],
        ["evaluation", f"{r['split']} split after adapting on {r['shots']} cases per class"],
    ] + ([["note", r["data_note"]]] if r["data_note"] else []))
    summary = "".join(paragraph(f"{'Participating' if role == 'train' else 'Held-out'} hospitals "
                                f"({s['hospitals']}): mean {metric_label(primary)} {s[f'mean_{primary}']:.3f}, worst "
                                f"site {s['worst_site']} at {s[f'worst_{primary}']:.3f}.")
                      for role, s in rep["summary"].items())
    final = table(["hospital", "role", *[metric_label(m) for m in metrics]],
                  [[h, m["role"], *[m[k] for k in metrics]] for h, m in rep["final"].items()])
    final += "".join(paragraph(f"{h}: no final score (its last evaluation failed)", "warn") for h in rep["final_missing"])
    privacy = paragraph(rep["privacy"]["note"])
    if rep["privacy"]["hospitals"]:
        rows = rep["privacy"]["hospitals"]
        privacy += spend_table(rows)
        privacy += figure(epsilon_figure(rows), "privacy spend per hospital")
    missed = rep["missed_rounds"]
    missed_html = table(["hospital", "round", "kind", "reason"],
                        [[h, m["round"], m["kind"], m["reason"]] for h, ms in sorted(missed.items()) for m in ms]) \
        if missed else paragraph("Every hospital sent work was heard in every round.")
    sections = [("The run", about + summary), (f"{metric_label(primary)} per round", _curves(run, primary)),
                ("Final metrics per hospital", final), ("Privacy", privacy), ("Missed rounds", missed_html)]
    return page(f"Run report: {r['algorithm']}, seed {r['seed']}", sections)
