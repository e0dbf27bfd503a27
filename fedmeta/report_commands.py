"""The command line of what a person reads: ``onboard`` (a new hospital adapts a finished run's
model and gets a report), ``report`` (a page for a whole run) and ``export-site`` (one generated
or simulated hospital's data as a file, e.g. to onboard it)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from fedmeta.errors import FedMetaError
from fedmeta.output_dir import claimed_output_dir

__all__ = ["add_report_parsers"]


def _write(out: Path, report: dict[str, Any], html: str) -> None:
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if not k.startswith("_")},
                                                indent=2) + "\n", encoding="utf-8")
    (out / "report.html").write_text(html, encoding="utf-8")


def _onboard(args: argparse.Namespace) -> None:
    from fedmeta.finished_run import read_run
    from fedmeta.onboarding import onboard
    from fedmeta.report.onboarding_page import onboarding_page

    run = read_run(Path(args.run_dir))
    shots = args.shots if args.shots is not None else run.cfg.eval.shots
    if shots < 1:
        raise FedMetaError(f"--shots {shots}: at least one labelled case per class is needed")
    if args.bootstrap < 0:
        raise FedMetaError(f"--bootstrap {args.bootstrap}: the number of resamples cannot be negative")
    data = Path(args.data)
    out = Path(args.out) if args.out else Path("runs") / f"onboard-{data.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    seed = run.cfg.seed if args.seed is None else args.seed
    with claimed_output_dir(out) as out_dir:  # claimed first: a taken --out fails before the work
        report = onboard(run, data, shots=shots, seed=seed, overrides=list(args.set or []),
                         temperature=args.temperature, resamples=args.bootstrap)
        _write(out_dir, report, onboarding_page(report))
    primary = report["run"]["primary"]
    for name, m in report["models"].items():
        v = m[primary]
        print(f"{name:<28} {primary} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]")
    print(f"evaluated on {report['hospital']['evaluated']} cases after adapting on {report['hospital']['adapted_on']}; "
          "nothing left this machine")
    print(f"report: {out}/report.html, {out}/report.json")


def _report(args: argparse.Namespace) -> None:
    from fedmeta.finished_run import read_run
    from fedmeta.report.run_report import run_page, run_report

    run = read_run(Path(args.run_dir))
    out = Path(args.out) if args.out else run.path / "report"
    with claimed_output_dir(out) as out_dir:
        report = run_report(run)
        _write(out_dir, report, run_page(report, run))
    print(f"report: {out}/report.html, {out}/report.json")


def _export_site(args: argparse.Namespace, load: Any) -> None:
    from fedmeta.data.site_file import SITE_FILES, write_site_file
    from fedmeta.data.sources import SOURCES

    cfg = load(args)
    out = Path(args.out)
    suffix = SITE_FILES[cfg.data.source][0][0]
    if out.suffix != suffix:
        raise FedMetaError(f"--out {out}: a {cfg.data.source} hospital is written as a {suffix} file")
    if out.exists():
        raise FedMetaError(f"--out {out}: already exists; choose another file")
    sites, features = SOURCES[cfg.data.source](cfg)
    by_name = {s.name: s for s in sites}
    if args.hospital not in by_name:
        raise FedMetaError(f"--hospital {args.hospital}: not a hospital of this config "
                           f"(its hospitals: {', '.join(by_name)})")
    site = by_name[args.hospital]
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # nothing half-written under the final name
    try:
        write_site_file(site, features, cfg, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote hospital {site.name} ({len(site.y)} cases) to {out}")


def add_report_parsers(sub: Any, load: Any) -> None:
    """``onboard``, ``report`` and ``export-site`` (``load``: the CLI's config loader)."""
    o = sub.add_parser("onboard", help="adapt a finished run's model at a new hospital and write a report its "
                       "clinical team can read (report.html, report.json)")
    o.add_argument("run_dir", help="a finished run's directory (fedmeta simulate --out, or a compare's runs/...)")
    o.add_argument("--data", required=True, help="the new hospital's labelled data: one file in the run's source "
                   "format (.csv, UCI .data, .npz)")
    o.add_argument("--shots", type=int, help="labelled cases per class to adapt on (default: the run's eval.shots)")
    o.add_argument("--seed", type=int, help="which cases are adapted on (default: the run's seed)")
    o.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change the adaptation: meta.inner_steps, meta.inner_lr, local.* (repeatable)")
    o.add_argument("--temperature", action="store_true",
                   help="also fit a temperature on the labelled cases and report the scaled model's calibration")
    o.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals (default 1000)")
    o.add_argument("--out", help="report directory (must not exist or be empty; default runs/onboard-<file>-<time>)")
    o.set_defaults(func=_onboard)

    r = sub.add_parser("report", help="one page for a finished run: curves, per-site metrics, privacy spend, "
                       "missed rounds")
    r.add_argument("run_dir", help="a finished run's directory")
    r.add_argument("--out", help="report directory (default RUN_DIR/report)")
    r.set_defaults(func=_report)

    e = sub.add_parser("export-site", help="write one hospital of a config's generated or simulated federation "
                       "as a file (e.g. a held-out one, to onboard it)")
    e.add_argument("config", help="experiment config (TOML), e.g. configs/synthetic.toml")
    e.add_argument("--hospital", required=True, help="the hospital to write")
    e.add_argument("--out", required=True, help="the file to write (.csv for a table, .npz for images)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    e.add_argument("--data-dir", help="directory with the data of a data-dir source")
    e.add_argument("--seed", type=int, help="shorthand for --set seed=N (synthetic data depends on it)")
    e.set_defaults(func=lambda args: _export_site(args, load))
