"""Audit of privacy ledgers, failing closed.

A ledger passes only if every row is well formed, the append-only triggers are in place, row ids are
1..N, the hash chain holds, every recorded epsilon equals Opacus' recomputation over the history up
to it, and no row is over its cap. With the run (``--run RUN_DIR``), the ledger must also still hold
the head the run recorded for its hospital, and the run's rows must carry the sigma, sampling rates,
steps and mechanisms its resolved config implies, and the delta and accountant the hospital reported.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedmeta.config import ExperimentConfig, config_from_json
from fedmeta.errors import FedMetaError
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import LedgerError, LedgerRow, PrivacyLedger, chain_problems, structure_problems, \
    verify_anchor
from fedmeta.privacy.policy import PolicyRefusal, negotiate, policy_from_config

__all__ = ["LedgerReport", "RunRecord", "audit_ledger", "load_run_record", "write_audit"]

# Recomputation runs the same deterministic accountant code on the same history: anything beyond
# floating-point noise is a different history or a different number.
REL_TOL = 1e-6
_INTS = ("id", "round", "steps")
_REALS = ("sigma", "sample_rate", "max_grad_norm", "delta", "epsilon", "max_epsilon")


@dataclass(frozen=True)
class RunRecord:
    """What a run recorded of its hospitals' spends (results.json, else its checkpoint)."""

    path: Path
    config: ExperimentConfig
    ledgers: dict[str, dict[str, Any]]
    n_train: dict[str, int]


@dataclass
class LedgerReport:
    path: str
    hospital: str
    rows: list[LedgerRow] = field(default_factory=list)
    recomputed: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # tampering, mismatch or overspend: exit 1
    malformed: str = ""  # a row that is not a spend at all: exit 3

    @property
    def ok(self) -> bool:
        return not self.problems and not self.malformed

    @property
    def epsilon(self) -> float:
        return self.recomputed[-1] if self.recomputed else 0.0

    @property
    def max_epsilon(self) -> float:
        return self.rows[-1].max_epsilon if self.rows and not self.malformed else math.inf

    @property
    def rounds(self) -> int:
        return len({(r.run_id, r.round) for r in self.rows})

    def to_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.path, "hospital": self.hospital, "ok": self.ok, "rounds": self.rounds,
            "epsilon": self.epsilon, "max_epsilon": self.max_epsilon,
            "remaining": self.max_epsilon - self.epsilon, "problems": self.problems, "malformed": self.malformed,
            "mechanisms": sorted({r.mechanism for r in self.rows}),
            "rows": [{**asdict(r), "recomputed_epsilon": e} for r, e in zip(self.rows, self.recomputed)],
        }


def _malformed(row: LedgerRow) -> str:
    for name in _INTS:
        if type(getattr(row, name)) is not int:
            return f"{name} is {getattr(row, name)!r}, not an integer"
    for name in _REALS:
        value = getattr(row, name)
        if type(value) not in (int, float) or math.isnan(value):
            return f"{name} is {value!r}, not a number"
    checks = [(row.sigma > 0 and math.isfinite(row.sigma), "sigma must be > 0"),
              (0 < row.sample_rate <= 1, "sample_rate must be in (0, 1]"),
              (row.steps >= 1, "steps must be >= 1"), (row.max_grad_norm > 0, "max_grad_norm must be > 0"),
              (0 < row.delta < 1, "delta must be in (0, 1)"), (row.accountant in ("prv", "rdp"), "unknown accountant"),
              (row.epsilon >= 0 and math.isfinite(row.epsilon), "epsilon must be finite and >= 0"),
              (row.max_epsilon > 0, "max_epsilon must be > 0")]
    wrong = [why for good, why in checks if not good]
    return (f"{wrong[0]} (sigma {row.sigma!r}, sample_rate {row.sample_rate!r}, steps {row.steps!r}, "
            f"delta {row.delta!r}, accountant {row.accountant!r})") if wrong else ""


def _read(path: Path) -> tuple[list[LedgerRow], list[str]]:
    if not path.is_file():
        raise FedMetaError(f"{path}: ledger not found")
    try:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            structure = structure_problems(db)
            if structure and "no spend table" in structure[0]:
                raise FedMetaError(f"{path}: not a privacy ledger ({structure[0]})")
            if structure and "columns" in structure[0]:
                raise FedMetaError(f"{path}: not a readable privacy ledger: {structure[0]}")
        finally:
            db.close()
        return PrivacyLedger.read_only(path), structure
    except sqlite3.DatabaseError as err:
        raise FedMetaError(f"{path}: not a privacy ledger ({err})") from None


def audit_ledger(path: str | Path, run: RunRecord | None = None) -> LedgerReport:
    path = Path(path)
    rows, structure = _read(path)
    hospitals = sorted({str(r.hospital) for r in rows})
    report = LedgerReport(str(path), ", ".join(hospitals) or path.stem, rows, problems=list(structure))
    for row in rows:
        if why := _malformed(row):
            report.malformed = f"row {row.id}: {why}"
            return report
    report.problems += chain_problems(rows)
    if len(hospitals) > 1:
        report.problems.append(f"rows of several hospitals in one ledger: {hospitals}")
    for i, row in enumerate(rows):
        try:
            recomputed = epsilon_of([r.as_mechanism for r in rows[: i + 1]], delta=row.delta,
                                    accountant=row.accountant)
        except (ArithmeticError, ValueError, MemoryError) as err:  # sigma or q no accountant can take
            report.malformed = f"row {row.id}: its epsilon cannot be recomputed ({type(err).__name__}: {err})"
            return report
        report.recomputed.append(recomputed)
        if not math.isclose(recomputed, row.epsilon, rel_tol=REL_TOL, abs_tol=1e-12):
            report.problems.append(f"row {row.id} (run {row.run_id}, round {row.round}): recorded epsilon "
                                   f"{row.epsilon:.6g}, recomputed {recomputed:.6g}")
        if recomputed > row.max_epsilon * (1 + REL_TOL):
            report.problems.append(f"row {row.id}: epsilon {recomputed:.4f} is over the cap {row.max_epsilon:g}")
    if run is not None:
        report.problems += _against_run(rows, run, hospitals[0] if len(hospitals) == 1 else path.stem)
    return report


def _against_run(rows: list[LedgerRow], run: RunRecord, hospital: str) -> list[str]:
    anchor = run.ledgers.get(hospital)
    if anchor is None:
        return [f"run {run.path} recorded no private spend of hospital {hospital}"]
    try:
        verify_anchor(rows, int(anchor["rows"]), str(anchor["head"]), f"ledger of {hospital}")
    except LedgerError as err:
        return [str(err)]
    cfg = run.config
    try:
        plan = negotiate(policy_from_config(cfg, hospital), cfg, hospital=hospital, n_train=run.n_train[hospital])
    except (PolicyRefusal, FedMetaError, KeyError) as err:
        return [f"the run's config gives no privacy plan for hospital {hospital}: {err}"]
    if plan is None:
        return [f"the run's config is not private, yet its ledger of {hospital} has rows"]
    releases = {r.mechanism: r for r in plan.releases}
    ours = [r for r in rows[: int(anchor["rows"])] if r.run_id in set(anchor.get("run_ids", []))]
    if not ours:
        return [f"the ledger holds no row of the run's ids {anchor.get('run_ids')}"]
    problems = []
    for r in ours:
        release = releases.get(r.mechanism)
        expected = [("mechanism", r.mechanism in releases, f"one of {sorted(releases)}"),
                    ("algorithm", r.algorithm == cfg.meta.algorithm, cfg.meta.algorithm),
                    ("sigma", math.isclose(r.sigma, plan.sigma, rel_tol=1e-9), f"{plan.sigma:.6g}"),
                    ("sample_rate", release is not None and math.isclose(r.sample_rate, release.sample_rate,
                                                                         rel_tol=1e-9),
                     f"{release.sample_rate:.6g}" if release else "-"),
                    ("steps", release is not None and r.steps == release.steps_per_round,
                     str(release.steps_per_round) if release else "-"),
                    ("max_grad_norm", math.isclose(r.max_grad_norm, plan.max_grad_norm), f"{plan.max_grad_norm:g}"),
                    ("delta", math.isclose(r.delta, float(anchor.get("delta") or plan.delta), rel_tol=1e-9)
                     and r.delta <= plan.delta * (1 + 1e-9), f"{float(anchor.get('delta') or plan.delta):.3g}"),
                    ("accountant", r.accountant == (anchor.get("accountant") or plan.accountant),
                     str(anchor.get("accountant") or plan.accountant)),
                    ("max_epsilon", r.max_epsilon <= plan.max_epsilon * (1 + 1e-9), f"<= {plan.max_epsilon:g}")]
        for name, good, want in expected:
            if not good:
                problems.append(f"row {r.id} (run {r.run_id}, round {r.round}): {name} {getattr(r, name)!r} "
                                f"does not match the run (expected {want})")
                break
    return problems


def load_run_record(run_dir: str | Path) -> RunRecord:
    """The spends a run recorded (results.json, else checkpoint.pt of an unfinished run)."""
    run_dir = Path(run_dir)
    results = run_dir / "results.json"
    try:
        if results.is_file():
            data = json.loads(results.read_text(encoding="utf-8"))
            history, config = data["history"], json.dumps(data["config"])
        elif (run_dir / "checkpoint.pt").is_file():
            import torch

            raw = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
            history, config = raw["history"], raw["config"]
        else:
            raise FedMetaError(f"--run {run_dir}: no results.json or checkpoint.pt there")
        n_train: dict[str, int] = {}
        for rnd in history["rounds"]:
            for h, m in rnd["train"].items():
                n_train[h] = int(m["num-examples"])
                if n_train[h] < 1:
                    raise ValueError(f"hospital {h} reported {n_train[h]} train records")
        ledgers = {str(h): dict(a) for h, a in history.get("ledgers", {}).items()}
        for h, a in ledgers.items():
            a["rows"], a["head"] = int(a["rows"]), str(a["head"])
            a["run_ids"] = [str(i) for i in a.get("run_ids", [])]
        return RunRecord(run_dir, config_from_json(config), ledgers, n_train)
    except FedMetaError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise FedMetaError(f"--run {run_dir}: not a readable fedmeta run: {err}") from None


def _plot(reports: list[LedgerReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rep in reports:
        if not rep.recomputed:
            continue
        xs = list(range(1, len(rep.recomputed) + 1))
        line, = ax.plot(xs, rep.recomputed, marker="o", ms=3, label=rep.hospital + ("" if rep.ok else " (FAILED)"))
        if math.isfinite(rep.max_epsilon):
            ax.axhline(rep.max_epsilon, ls=":", lw=1, color=line.get_color())
    ax.set_xlabel("ledger entry (one release kind of one round)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("epsilon (recomputed)")
    ax.set_title("privacy spent per hospital (dotted: cap)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_audit(reports: list[LedgerReport], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "audit.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n",
                                        encoding="utf-8")
    _plot(reports, out_dir / "audit.png")
