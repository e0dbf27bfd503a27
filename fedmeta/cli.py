"""``fedmeta`` command line: ``simulate`` one federation, ``compare`` algorithms and seeds, ``tune``
an algorithm on validation data, ``onboard`` a new hospital, ``report`` a run, ``audit`` privacy
ledgers, ``deploy`` credentials and ``deploy-local`` (the deployment on 127.0.0.1).

User errors (bad config, bad data) print one line and exit 2 with nothing left behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import datetime
from pathlib import Path

from fedmeta.config import ExperimentConfig, load_config
from fedmeta.errors import FedMetaError
from fedmeta.output_dir import claimed_output_dir
from fedmeta.termination import Terminated, leave, sigterm_interrupts

__all__ = ["main"]


def _default_out(config: Path, label: str) -> Path:
    return Path("runs") / f"{config.stem}-{label}-{datetime.now():%Y%m%d-%H%M%S}"


def _load(args: argparse.Namespace) -> ExperimentConfig:
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config, overrides, args.data_dir)


def _print_summary(results: dict) -> None:
    from fedmeta.tasks import metric_label

    primary, *others = results["metrics"]
    if results.get("data_note"):
        print(f"note: {results['data_note']}")
    for role, s in results["summary"].items():
        label = "participating hospitals" if role == "train" else "held-out hospitals"
        print(f"{label}: mean {metric_label(primary)} {s[f'mean_{primary}']:.3f}, worst-site {metric_label(primary)} "
              f"{s[f'worst_{primary}']:.3f} ({s['worst_site']})"
              + "".join(f", mean {metric_label(k)} {s[f'mean_{k}']:.3f}" for k in others))
    for h, m in results["final"].items():
        print(f"  {h:<16} {m['role']:<9} " + "  ".join(f"{metric_label(k)} {m[k]:.3f}" for k in results["metrics"]))
    for h in results.get("final_missing", []):
        print(f"  {h:<16} no final score (its last evaluation failed; see results.json)")


def _simulate(args: argparse.Namespace) -> None:
    cfg = _load(args)
    if cfg.data.leave_one_out:
        raise FedMetaError(f"{args.config}: data.leave_one_out runs one federation per hospital: "
                           "use `fedmeta compare` for it")
    from fedmeta.data.sources import load_federation
    from fedmeta.simulation import simulate

    from fedmeta.privacy.preflight import check_run

    check_run(cfg, load_federation(cfg))  # validate the data and the privacy plan before creating anything
    if args.resume:
        from fedmeta.simulation import resume_simulation

        out = Path(args.resume).resolve()
        if args.out and Path(args.out).resolve() != out:
            raise FedMetaError(f"--out {args.out}: a resumed run writes into the directory it resumes ({args.resume})")
        results = resume_simulation(cfg, out, progress=not args.quiet, ray_address=args.ray_address or "")
    else:
        out = Path(args.out) if args.out else _default_out(Path(args.config), f"{cfg.meta.algorithm}-seed{cfg.seed}")
        with claimed_output_dir(out) as run_dir:
            results = simulate(cfg, run_dir, progress=not args.quiet, ray_address=args.ray_address or "")
    _print_summary(results)
    print(f"results: {out}/results.json")


def _empirical_audit(args: argparse.Namespace) -> int:
    from fedmeta.data.sources import load_federation
    from fedmeta.privacy.audit_run import run_empirical_audit
    from fedmeta.simulation import simulate

    overrides = list(args.set or [])
    if args.canaries is not None:
        overrides.append(f"audit.canaries={args.canaries}")
    if args.hospital:
        overrides.append(f'audit.hospital="{args.hospital}"')
    cfg = load_config(args.empirical, overrides, args.data_dir)
    if not cfg.audit.hospital:
        first = load_federation(cfg)
        held = set(cfg.data.held_out)
        cfg = cfg.model_copy(update={"audit": cfg.audit.model_copy(
            update={"hospital": next(h for h in first.names if h not in held)})})
    load_federation(cfg)
    out = Path(args.out) if args.out else Path("runs") / f"empirical-audit-{datetime.now():%Y%m%d-%H%M%S}"
    with claimed_output_dir(out) as run_dir:
        rep = run_empirical_audit(cfg, run_dir, simulate_fn=lambda c, d: simulate(c, d, progress=not args.quiet))
    print(f"hospital {rep['hospital']}: {rep['correct']} of {rep['guesses']} guesses correct on "
          f"{rep['canaries']} canaries ({rep['included']} inserted)")
    print(f"empirical epsilon lower bound (95%): {rep['epsilon_lower_bound']:.3f}   "
          f"accountant epsilon: {rep['epsilon_claimed']:.3f}   delta {rep['delta']:.2e}")
    print("consistent with the accountant" if rep["consistent"] else
          "LOWER BOUND ABOVE THE CLAIMED EPSILON: the privacy accounting or noise is wrong")
    print(f"report: {out}/empirical_audit.json")
    return 0 if rep["consistent"] else 1


AUDIT_FAILED, AUDIT_MALFORMED = 1, 3  # exit codes: a ledger that fails a check; a row that is not a spend


def _audit(args: argparse.Namespace) -> int:
    from fedmeta.privacy.ledger_audit import audit_ledger, load_run_record, write_audit

    if args.empirical:
        return _empirical_audit(args)
    if not args.ledgers:
        raise FedMetaError("audit: give ledger files, or --empirical CONFIG")
    run = load_run_record(args.run) if args.run else None
    reports = [audit_ledger(p, run) for p in args.ledgers]
    print(f"{'hospital':<16} {'rounds':>6} {'epsilon':>9} {'cap':>8} {'remaining':>9}  mechanisms; check")
    for rep in reports:
        capped = rep.max_epsilon != float("inf")
        cap = f"{rep.max_epsilon:.3f}" if capped else "none"
        left = f"{rep.max_epsilon - rep.epsilon:.3f}" if capped else "-"
        verdict = "ok" if rep.ok else "MALFORMED" if rep.malformed else f"FAILED ({len(rep.problems)} problem(s))"
        mechs = ", ".join(sorted({r.mechanism for r in rep.rows})) if not rep.malformed else "-"
        print(f"{rep.hospital:<16} {rep.rounds:>6} {rep.epsilon:>9.3f} {cap:>8} {left:>9}  {mechs or '-'}; {verdict}")
        for line in ([rep.malformed] if rep.malformed else rep.problems):
            print(f"  {line}")
    out = Path(args.out) if args.out else Path("runs") / f"audit-{datetime.now():%Y%m%d-%H%M%S}"
    with claimed_output_dir(out) as run_dir:
        write_audit(reports, run_dir)
    print(f"report: {out}/audit.json, {out}/audit.png")
    if any(r.malformed for r in reports):
        return AUDIT_MALFORMED
    return AUDIT_FAILED if any(not r.ok for r in reports) else 0


def _deploy_certs(args: argparse.Namespace) -> None:
    from fedmeta.deploy.certs import DEFAULT_SANS, create_credentials

    creds = create_credentials(Path(args.outdir), args.hospitals, args.san, force=args.force)
    root = creds.root
    print(f"CA:        {root}/ca/ca.crt (its key {root}/ca/ca.key: keep it offline)")
    print(f"SuperLink: {root}/superlink/ (server.crt for {', '.join([*DEFAULT_SANS, *(args.san or [])])})")
    for h in creds.hospitals:
        print(f"{h:<10} {root}/{h}/ (ca.crt, node.key, node.pub): give this folder to {h} only")
    print(f"register:  fedmeta deploy register {root}/public-keys/*.pub --superlink HOST:PORT --root-certificates "
          f"{root}/superlink/ca.crt")


def _deploy_register(args: argparse.Namespace) -> None:
    from fedmeta.deploy.register import register_keys

    for key, node_id in register_keys(args.public_keys, superlink=args.superlink,
                                      root_certificates=Path(args.root_certificates)):
        print(f"registered {key} as node {node_id}")


def _deploy_local(args: argparse.Namespace) -> None:
    from fedmeta.deploy.local import PROJECT_ROOT, deploy_local

    cfg = _load(args)
    if cfg.data.leave_one_out:
        raise FedMetaError(f"{args.config}: data.leave_one_out runs one federation per hospital: not deployable")
    if args.resume and args.out:
        raise FedMetaError("deploy-local: give --out for a new run or --resume RUN_DIR, not both")
    out = Path(args.resume or args.out or _default_out(Path(args.config), "deploy-local"))
    from fedmeta.data.sources import load_federation
    from fedmeta.privacy.preflight import check_run

    check_run(cfg, load_federation(cfg))
    from fedmeta.privacy.policy import node_policy_from_items

    node_policy = node_policy_from_items(args.node_policy or [], args.max_epsilon)

    summary = deploy_local(cfg, out, hospitals=args.hospitals, project=Path(args.project or PROJECT_ROOT),
                           node_policy=node_policy, timeout_s=args.timeout, resume=bool(args.resume),
                           announce=lambda line: print(line, file=sys.stderr, flush=True))
    results = json.loads(Path(summary["results"]).read_text())
    _print_summary(results)
    rounds = summary["round_s"]
    print("round time: " + ", ".join(f"{s:.1f}s" for s in rounds)
          + (f" (mean {sum(rounds) / len(rounds):.1f}s)" if rounds else ""))
    print(f"run {summary['run_id']}: {summary['status']} in {summary['run_s']:.1f}s "
          f"({summary['total_s']:.1f}s with start and stop); all processes stopped: {summary['stopped']}")
    print(f"results: {summary['results']}; logs: {out}/logs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmeta", description="Federated meta-learning for hospitals.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="experiment config (TOML), e.g. configs/default.toml")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set federation.rounds=5 (repeatable)")
        sp.add_argument("--data-dir", help="directory with the data of a csv / uci-heart config")
        sp.add_argument("--seed", type=int, help="shorthand for --set seed=N")
        sp.add_argument("--out", help="output directory (must not exist or be empty; default runs/<name>-<time>)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("simulate", help="run one federation on Flower's simulation engine (Ray)")
    common(s)
    s.add_argument("--resume", metavar="OUT_DIR",
                   help="continue the killed run whose --out was OUT_DIR from its last checkpointed round")
    s.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="run on this existing Ray cluster (default: $RAY_ADDRESS, else a new one on this machine)")
    s.set_defaults(func=_simulate)
    from fedmeta.compare_command import add_compare_parser
    from fedmeta.tuning.command import add_tune_parser

    from fedmeta.report_commands import add_report_parsers

    add_compare_parser(sub, common, _load, _default_out)
    add_tune_parser(sub, common, _load, _default_out)
    add_report_parsers(sub, _load)
    a = sub.add_parser("audit", help="recompute and report the privacy spent in hospitals' ledgers")
    a.add_argument("ledgers", nargs="*", help="ledger files (<out>/ledgers/<hospital>.sqlite)")
    a.add_argument("--run", metavar="RUN_DIR", help="also check the ledgers against this run: the head it recorded "
                   "for each hospital, and the sigma, rates, steps, delta and accountant its config implies")
    a.add_argument("--out", help="report directory (default runs/audit-<time>)")
    a.add_argument("--empirical", metavar="CONFIG", help="run a one-run canary audit of CONFIG instead")
    a.add_argument("--canaries", type=int, help="number of canaries (sets audit.canaries)")
    a.add_argument("--hospital", help="hospital to insert the canaries into (default: the first training one)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    a.add_argument("--data-dir", help="directory with the data of a csv / uci-heart config")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_audit)

    d = sub.add_parser("deploy", help="credentials of a multi-site deployment (see README, Deployment)")
    dsub = d.add_subparsers(dest="deploy_command", required=True)
    dc = dsub.add_parser("certs", help="create a CA, the SuperLink certificate and one key pair per hospital")
    dc.add_argument("outdir", help="directory for the credentials (one folder per destination)")
    dc.add_argument("--hospitals", nargs="+", required=True, metavar="NAME", help="one key pair per hospital")
    dc.add_argument("--san", action="append", metavar="NAME",
                    help="extra DNS name or IP of the SuperLink for its certificate (repeatable); "
                         "127.0.0.1, localhost and superlink are always included")
    dc.add_argument("--force", action="store_true", help="replace existing credentials")
    dc.set_defaults(func=_deploy_certs)
    dr = dsub.add_parser("register", help="register hospitals' public keys with a running SuperLink")
    dr.add_argument("public_keys", nargs="+", help="public key files (public-keys/<hospital>.pub)")
    dr.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink address HOST:PORT "
                    "(default 127.0.0.1:8000, the port docker-compose.yml publishes)")
    dr.add_argument("--root-certificates", required=True, metavar="CA_CERT",
                    help="the CA certificate that signed the SuperLink's certificate")
    dr.set_defaults(func=_deploy_register)

    dl = sub.add_parser("deploy-local", help="run the deployment topology on this machine: a SuperLink with "
                        "TLS and SuperNode auth, one SuperNode per hospital, `flwr run`")
    dl.add_argument("config", help="experiment config (TOML), e.g. configs/deploy.toml")
    dl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    dl.add_argument("--data-dir", help="directory with the data of a csv / uci-heart config; each node "
                    "sees only its own file")
    dl.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    dl.add_argument("--hospitals", nargs="+", metavar="NAME",
                    help="node names (synthetic: the generated sites in order; csv / uci-heart: a subset)")
    dl.add_argument("--max-epsilon", type=float, help="each hospital's privacy cap (node config max-epsilon; "
                    "a node without one caps itself at 10)")
    dl.add_argument("--node-policy", action="append", metavar="KEY=VALUE",
                    help="a privacy policy key every node's config gets (repeatable): privacy-mode=record|client|none, "
                         "max-epsilon, delta, accountant, min-noise-multiplier; see docs/privacy.md")
    dl.add_argument("--project", help="the fedmeta project directory that `flwr run` submits "
                    "(default: this installation's)")
    dl.add_argument("--timeout", type=float, default=1800.0, help="seconds the run may take (default 1800)")
    dl.add_argument("--out", help="run directory (must not exist; default runs/<name>-deploy-local-<time>)")
    dl.add_argument("--resume", metavar="RUN_DIR", help="the run directory of an interrupted deploy-local: "
                    "start its SuperLink (same database), ServerApp executor and SuperNodes again and continue "
                    "after the last checkpointed round (same config and --set as the interrupted run)")
    dl.set_defaults(func=_deploy_local)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with sigterm_interrupts() as threads_before:
        try:
            code = args.func(args)
        except FedMetaError as err:
            print(f"fedmeta: error: {err}", file=sys.stderr)
            return 2
        except (Terminated, SystemExit):  # SystemExit: the handler a Ray driver installs when it connects
            print("fedmeta: terminated", file=sys.stderr)
            return leave(128 + signal.SIGTERM, threads_before)
        except KeyboardInterrupt:
            print("fedmeta: interrupted", file=sys.stderr)
            return leave(130, threads_before)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
