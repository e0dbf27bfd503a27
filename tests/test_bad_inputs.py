"""A table of bad inputs through ``fedmeta.cli.main``: each is refused before anything runs, in one
line naming the argument, file or field (exit 2, no traceback), and leaves nothing behind.

Append cases to ``CASES``: ``(id, argv, expected)``. ``argv`` is a list of strings or a function of
the test's tmp directory returning one (to write the bad files first); ``{tmp}`` and ``{ppid}`` in
strings are filled in. ``expected`` is a fragment of the error line, or ``ARGPARSE`` for input
argparse itself rejects (SystemExit 2 with its usage message, not the one-line format).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.errors import FedMetaError
from fedmeta.output_dir import CLAIM, FAILED, claimed_output_dir

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")
DEPLOY = str(ROOT / "configs" / "deploy.toml")
ARGPARSE = "<argparse usage error>"
OUT = "{tmp}/out"

Argv = list[str] | Callable[[Path], list[str]]


def _sim(*extra: str) -> list[str]:
    return ["simulate", CI, *extra, "--out", OUT, "--quiet"]


def _set(*overrides: str) -> list[str]:
    return _sim(*[a for o in overrides for a in ("--set", o)])


def _config(text: str | bytes, name: str = "bad.toml") -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return ["simulate", str(tmp / name), "--out", str(tmp / "out"), "--quiet"]
    return build


CSV_TOML = '[data]\nsource = "csv"\n[meta]\nshots = 3\nquery = 5\n[eval]\nshots = 3\n'
HEADER = "age,bp,label"


def _rows(n: int = 40) -> list[str]:
    return [f"{40 + i % 30},{110 + (i * 7) % 40},{i % 2}" for i in range(n)]


def _good(header: str = HEADER, n: int = 40) -> str:
    return "\n".join([header, *_rows(n)]) + "\n"


def _csv_toml(tmp: Path) -> str:
    (tmp / "csv.toml").write_text(CSV_TOML)
    return str(tmp / "csv.toml")


def _csv(beta: str | None, files: tuple[str, ...] = ("alpha", "beta", "gamma")) -> Callable[[Path], list[str]]:
    """A csv federation whose file beta.csv holds ``beta`` (None: a good file like the others)."""
    def build(tmp: Path) -> list[str]:
        data = tmp / "sites"
        data.mkdir()
        for name in files:
            text = beta if name == "beta" and beta is not None else _good()
            (data / f"{name}.csv").write_text(text, encoding="utf-8")
        return ["simulate", _csv_toml(tmp), "--data-dir", str(data), "--out", str(tmp / "out"), "--quiet"]
    return build


def _with(files: dict[str, str | bytes], argv: list[str]) -> Callable[[Path], list[str]]:
    """Write ``files`` (paths relative to tmp) first; then ``argv``."""
    def build(tmp: Path) -> list[str]:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_fill(content, tmp).encode() if isinstance(content, str) else content)
        return [_fill(a, tmp) for a in argv]
    return build


def _csv_bytes(beta: bytes) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        argv = _csv(None)(tmp)
        (tmp / "sites" / "beta.csv").write_bytes(beta)
        return argv
    return build


IMAGES_TOML = ('[data]\nsource = "images"\ndir = "{tmp}/scans"\n[model]\nkind = "convnet"\nwidth = 4\n'
               '[meta]\nshots = 3\nquery = 5\n[eval]\nshots = 3\n')


def _scans(n: int = 30, size: int = 8, **arrays) -> bytes:
    """One hospital's npz: ``n`` random 8x8 scans, alternating labels, overridden by ``arrays``."""
    import io

    import numpy as np

    rng = np.random.default_rng(n)
    data = {"images": rng.integers(0, 255, (n, size, size), dtype=np.uint8), "labels": np.arange(n) % 2, **arrays}
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in data.items() if v is not None})
    return buf.getvalue()


def _images(beta: bytes, *extra: str) -> Callable[[Path], list[str]]:
    """Three hospitals of scans, ``beta`` being the odd one; ``fedmeta simulate`` on them."""
    return _with({"img.toml": IMAGES_TOML, "scans/alpha.npz": _scans(), "scans/beta.npz": beta,
                  "scans/gamma.npz": _scans(40)}, ["simulate", "{tmp}/img.toml", "--out", OUT, *extra])


def _nan_scans() -> bytes:
    import numpy as np

    images = np.random.default_rng(0).random((30, 8, 8))
    images[4, 2, 3] = np.nan
    return _scans(images=images)


def _certs(*args: str) -> list[str]:
    return ["deploy", "certs", "{tmp}/certs", *args]


CASES: list[tuple[str, Argv, str]] = [
    # config files
    ("config-missing", ["simulate", "{tmp}/nope.toml", "--out", OUT], "nope.toml: config file not found"),
    ("config-invalid-toml", _config("rounds = = 3\n"), "bad.toml: invalid TOML"),
    ("config-not-utf8", _config(b"\xff\xfe rounds = \x00"), "bad.toml: cannot read config"),
    ("config-unknown-section", _config("[fedration]\nrounds = 3\n"), "bad.toml: fedration: unknown key"),
    ("config-unknown-key", _config("[data]\nlabl = 'y'\n"), "bad.toml: data.labl: unknown key"),
    ("config-wrong-type", _config("[federation]\nrounds = 'three'\n"),
     "bad.toml: federation.rounds: Input should be a valid integer"),
    ("config-section-not-table", _config("meta = 3\n"), "bad.toml: meta: Input should be a valid dictionary"),
    # out-of-range values, one or more per config section
    ("seed-negative", _sim("--seed", "-1"), "seed: Input should be greater than or equal to 0"),
    ("seed-negative-set", _set("seed=-3"), "seed: Input should be greater than or equal to 0"),
    ("data-test-fraction", _set("data.test_fraction=1.5"), "data.test_fraction: Input should be less than 1"),
    ("data-source-unknown", _set("data.source='mimic'"), "data.source: unknown data source 'mimic'"),
    ("data-synthetic-hospitals", _set("data.synthetic.hospitals=1"),
     "data.synthetic.hospitals: Input should be greater than or equal to 2"),
    ("data-synthetic-patients", _set("data.synthetic.min_patients=500", "data.synthetic.max_patients=100"),
     "data.synthetic: max_patients must be >= min_patients"),
    ("data-held-out-unknown", _set("data.held_out=['nowhere']"), "data.held_out: unknown hospital 'nowhere'"),
    ("data-held-out-all", _set("data.held_out=['hospital-01','hospital-02','hospital-03','hospital-04',"
                               "'hospital-05']"), "data.held_out: every hospital is held out"),
    ("data-leave-one-out-simulate", _set("data.leave_one_out=true"), "data.leave_one_out runs one federation"),
    ("model-hidden", _set("model.hidden=[16, 0]"), "model: hidden sizes must be positive"),
    ("meta-algorithm", _set("meta.algorithm='meta-sgd'"), "meta.algorithm: unknown algorithm 'meta-sgd'"),
    ("meta-algorithm-task", _set("meta.algorithm='protonet'", "task.kind='survival'"),
     "meta.algorithm: 'protonet' does not learn a 'survival' task (it learns binary, multiclass)"),
    ("meta-shots", _set("meta.shots=0"), "meta.shots: Input should be greater than or equal to 1"),
    ("meta-shots-too-many", _set("meta.shots=500"), "too few examples for the configured shots"),
    ("federation-rounds", _set("federation.rounds=0"), "federation.rounds: Input should be greater than or equal to 1"),
    ("federation-fraction", _set("federation.fraction_train=1.5"),
     "federation.fraction_train: Input should be less than or equal to 1"),
    ("server-optimizer", _set("server.optimizer='rmsprop'"), "server.optimizer: Input should be 'sgd' or 'adam'"),
    ("server-momentum", _set("server.momentum=1"), "server.momentum: Input should be less than 1"),
    ("eval-draws", _set("eval.draws=0"), "eval.draws: Input should be greater than or equal to 1"),
    ("local-batch-size", _set("local.batch_size=0"), "local.batch_size: Input should be greater than or equal to 1"),
    ("privacy-mode", _set("privacy.mode='secret'"), "privacy.mode: Input should be 'none', 'record' or 'client'"),
    ("privacy-clip", _set("privacy.max_grad_norm=0"), "privacy.max_grad_norm: Input should be greater than 0"),
    ("audit-canaries", _set("audit.canaries=-1"), "audit.canaries: Input should be greater than or equal to 0"),
    # --set syntax
    ("set-no-equals", _set("meta.inner_lr"), "--set: 'meta.inner_lr' is not of the form key=value"),
    ("set-into-value", _set("seed.x=1"), "--set: seed.x: seed is not a section"),
    ("set-unknown-key", _set("meta.inner_lrr=0.1"), "meta.inner_lrr: unknown key"),
    # CSV data
    ("csv-data-dir-missing", lambda tmp: ["simulate", _csv_toml(tmp), "--data-dir", str(tmp / "absent"),
                                          "--out", str(tmp / "out")], "absent: data directory not found"),
    ("csv-data-dir-not-given", lambda tmp: ["simulate", _csv_toml(tmp), "--out", str(tmp / "out")],
     "data.dir: the 'csv' source needs a data directory"),
    ("csv-one-file", _csv(None, files=("alpha",)), "expected one CSV per hospital (at least 2), found 1"),
    ("csv-empty-file", _csv(""), "beta.csv: file is empty"),
    ("csv-header-only", _csv(HEADER + "\n"), "beta.csv: no data rows"),
    ("csv-no-label-column", _csv(_good("age,bp,outcome")), "beta.csv: label column 'label' not found"),
    ("csv-label-duplicated", _csv(_good("age,label,label")), "beta.csv: label column 'label' appears 2 times"),
    ("csv-feature-duplicated", _csv(_good("age,age,label")), "beta.csv: column 'age' appears 2 times"),
    ("csv-non-numeric", _csv(_good() + "old,120,1\n"), "beta.csv: line 42, column 'age': non-numeric value 'old'"),
    ("csv-label-not-binary", _csv(_good() + "50,120,2\n"), "column 'label': label must be 0 or 1, got '2'"),
    ("csv-ragged-row", _csv(_good() + "50,120\n"), "beta.csv: line 42: 2 cells, expected 3"),
    ("csv-non-finite", _csv(_good() + "50,inf,1\n"), "beta.csv: line 42, column 'bp': non-finite value 'inf'"),
    ("csv-huge-line", _csv(_good() + "50," + "9" * 200_000 + ",1\n"),
     "beta.csv: line 42: not readable as CSV: field larger than field limit"),
    ("csv-not-utf8", _csv_bytes(b"\xe2ge,bp,label\n1,2,0\n"), "beta.csv: cannot read"),
    ("csv-columns-differ", _csv(_good("age,pressure,label")), "beta.csv: columns differ from alpha.csv"),
    ("csv-single-class", _csv("\n".join([HEADER, *[f"{50 + i},120,0" for i in range(40)]]) + "\n"),
     "hospital 'beta'"),
    # compare
    ("compare-seed-negative", ["compare", CI, "--seeds", "0", "-1", "--out", OUT], "--seeds: -1 is negative"),
    ("compare-seed-duplicated", ["compare", CI, "--seeds", "0", "0", "--out", OUT],
     "--seeds: 0 is given more than once"),
    ("compare-algorithm-unknown", ["compare", CI, "--algorithms", "local", "fedproxx", "--out", OUT],
     "--algorithms: unknown fedproxx"),
    ("compare-seed-not-int", ["compare", CI, "--seeds", "zero", "--out", OUT], ARGPARSE),
    # audit
    ("audit-ledger-missing", ["audit", "{tmp}/missing.sqlite", "--out", OUT], "missing.sqlite: ledger not found"),
    ("audit-ledger-not-sqlite", _with({"junk.sqlite": "not a database"}, ["audit", "{tmp}/junk.sqlite", "--out", OUT]),
     "junk.sqlite: not a privacy ledger"),
    ("audit-nothing-to-audit", ["audit", "--out", OUT], "audit: give ledger files, or --empirical CONFIG"),
    ("audit-empirical-few-canaries", ["audit", "--empirical", CI, "--canaries", "3", "--out", OUT, "--quiet"],
     "audit.canaries: an empirical audit needs at least 10 canaries"),
    ("audit-empirical-missing-config", ["audit", "--empirical", "{tmp}/nope.toml", "--out", OUT],
     "nope.toml: config file not found"),
    # --out
    ("out-not-empty", _with({"out/keep.txt": "mine"}, _sim()), "--out {tmp}/out: already exists and is not an empty"),
    ("out-is-a-file", _with({"out": "a file"}, _sim()), "--out {tmp}/out: already exists and is not an empty"),
    ("out-under-a-file", _with({"afile": "x"}, ["simulate", CI, "--out", "{tmp}/afile/out"]),
     "--out {tmp}/afile/out: cannot create the directory: {tmp}/afile is not a directory"),
    ("out-under-proc", ["simulate", CI, "--out", "/proc/fedmeta-out"], "--out /proc/fedmeta-out: cannot create"),
    ("out-in-use", _with({f"out/{CLAIM}": "{ppid}\n", "out/checkpoint.pt": "x"}, _sim()),
     "--out {tmp}/out: in use by another fedmeta run (pid {ppid})"),
    ("compare-out-under-a-file", _with({"afile": "x"}, ["compare", CI, "--out", "{tmp}/afile/out"]),
     "--out {tmp}/afile/out: cannot create the directory"),
    ("audit-out-under-proc", ["audit", "--empirical", CI, "--canaries", "50", "--out", "/proc/fedmeta-audit"],
     "--out /proc/fedmeta-audit: cannot create"),
    # simulate --resume
    ("resume-nothing", ["simulate", CI, "--resume", "{tmp}/none"], "--resume {tmp}/none: no checkpoint.pt there"),
    ("resume-finished", _with({"run/checkpoint.pt": "x", "run/results.json": "{}"},
                              ["simulate", CI, "--resume", "{tmp}/run"]), "--resume {tmp}/run: that run finished"),
    ("resume-still-running", _with({"run/checkpoint.pt": "x", f"run/{CLAIM}": "{ppid}\n"},
                                   ["simulate", CI, "--resume", "{tmp}/run"]),
     "--resume {tmp}/run: the run is still going on (pid {ppid})"),
    ("resume-other-out", ["simulate", CI, "--resume", "{tmp}/run", "--out", "{tmp}/other"],
     "--out {tmp}/other: a resumed run writes into the directory it resumes"),
    # deploy certs
    ("certs-name-reserved", _certs("--hospitals", "ca"), "--hospitals: 'ca' is not a usable hospital name"),
    ("certs-name-slash", _certs("--hospitals", "a/b"), "--hospitals: 'a/b' is not a usable hospital name"),
    ("certs-name-too-long", _certs("--hospitals", "h" * 300), "is not a usable hospital name"),
    ("certs-name-unicode", _certs("--hospitals", "hôpital"), "--hospitals: 'hôpital' is not a usable hospital name"),
    ("certs-name-dash-first", _certs("--hospitals", "-x"), ARGPARSE),
    ("certs-name-empty", _certs("--hospitals", ""), "--hospitals: '' is not a usable hospital name"),
    ("certs-name-duplicated", _certs("--hospitals", "x", "y", "x"), "--hospitals: duplicate names: 'x'"),
    ("certs-san-unicode", _certs("--hospitals", "a", "--san", "hôpital.example"),
     "--san: 'hôpital.example' is not an IP address or an ASCII DNS name"),
    ("certs-san-empty-label", _certs("--hospitals", "a", "--san", "a..example"), "--san: 'a..example' is not"),
    ("certs-san-forced-over-existing", _with({"certs/ca/ca.key": "old"}, _certs("--hospitals", "a", "--force",
                                                                                 "--san", "bad_name!")),
     "--san: 'bad_name!' is not"),
    ("certs-dir-under-a-file", _with({"afile": "x"}, ["deploy", "certs", "{tmp}/afile/certs", "--hospitals", "a"]),
     "{tmp}/afile/certs: cannot write the credentials there"),
    ("certs-dir-under-proc", ["deploy", "certs", "/proc/fedmeta-certs", "--hospitals", "a"],
     "/proc/fedmeta-certs: cannot write the credentials there"),
    ("certs-no-hospitals", ["deploy", "certs", "{tmp}/certs"], ARGPARSE),
    # deploy-local
    ("deploy-local-resume-without-plan", _with({"run/out/checkpoint.pt": "x"},
                                               ["deploy-local", DEPLOY, "--resume", "{tmp}/run"]),
     "--resume {tmp}/run: no plan.json there"),
    ("deploy-local-resume-bad-plan", _with({"run/out/checkpoint.pt": "x", "run/plan.json": "[1"},
                                           ["deploy-local", DEPLOY, "--resume", "{tmp}/run"]),
     "--resume {tmp}/run: plan.json is unreadable"),
    ("deploy-local-resume-nothing", ["deploy-local", DEPLOY, "--resume", "{tmp}/run"],
     "--resume {tmp}/run: no out/checkpoint.pt there"),
    ("deploy-local-out-under-a-file", _with({"afile": "x"}, ["deploy-local", DEPLOY, "--out", "{tmp}/afile/run"]),
     "--out {tmp}/afile/run: cannot create the run directory"),
    ("deploy-local-seed-negative", ["deploy-local", DEPLOY, "--seed", "-2", "--out", "{tmp}/run"],
     "seed: Input should be greater than or equal to 0"),
    ("deploy-local-timeout-not-number", ["deploy-local", DEPLOY, "--timeout", "soon", "--out", "{tmp}/run"], ARGPARSE),
    # privacy settings a hospital could not train with, refused before anything starts
    ("privacy-hospitals-typo", _set('privacy.hospitals={"hospitl-01" = {max_epsilon = 1.0}}'),
     "privacy.hospitals: unknown hospital 'hospitl-01'"),
    ("privacy-hospitals-cap-zero", _set('privacy.hospitals={"hospital-01" = {max_epsilon = 0}}'),
     "privacy.hospitals.hospital-01.max_epsilon: Input should be greater than 0"),
    ("privacy-hospitals-mode", _set('privacy.hospitals={"hospital-01" = {mode = "strong"}}'),
     "privacy.hospitals.hospital-01.mode: Input should be 'record', 'client' or 'none'"),
    ("privacy-noise-and-target", _set("privacy.mode='record'", "privacy.noise_multiplier=1", "privacy.target_epsilon=4"),
     "set exactly one of noise_multiplier and target_epsilon"),
    ("privacy-noise-negative", _set("privacy.mode='record'", "privacy.noise_multiplier=-1"),
     "privacy.noise_multiplier: Input should be greater than or equal to 0"),
    ("privacy-delta-one", _set("privacy.mode='record'", "privacy.noise_multiplier=1", "privacy.delta=1"),
     "privacy.delta: Input should be less than 1"),
    ("privacy-delta-above-1/n", _set("privacy.mode='record'", "privacy.noise_multiplier=1", "privacy.delta=0.5"),
     "privacy.delta: 0.5 is above 1/n"),
    ("privacy-delta-client", _set("privacy.mode='client'", "privacy.noise_multiplier=1", "privacy.delta=0.5"),
     "privacy.delta: 0.5 is above 1/hospitals"),
    ("privacy-target-unreachable", _set("privacy.mode='record'", "privacy.target_epsilon=0.001"),
     "privacy.target_epsilon: 0.001 cannot be reached"),
    ("privacy-sample-rate", _set("privacy.mode='record'", "privacy.noise_multiplier=1", "privacy.sample_rate=2"),
     "privacy.sample_rate: Input should be less than or equal to 1"),
    ("min-train-nodes-above-hospitals", _set("federation.min_train_nodes=9"),
     "federation.min_train_nodes: 9, but only 5 hospital(s) can train"),
    ("min-train-nodes-policies-refuse", _set("federation.min_train_nodes=4", 'privacy.hospitals={"hospital-01" = '
                                             '{mode = "record"}, "hospital-02" = {mode = "record"}}'),
     "only 3 hospital(s) can train (5 training, 2 refusing the run"),
    ("audit-seed-negative", _set("audit.seed=-1"), "audit.seed: Input should be greater than or equal to 0"),
    ("compare-privacy-unreachable", ["compare", CI, "--set", "privacy.mode='record'", "--set",
                                     "privacy.target_epsilon=0.001", "--algorithms", "fedmeta-maml", "--out", OUT],
     "privacy.target_epsilon: 0.001 cannot be reached"),
    ("deploy-local-node-policy-key", ["deploy-local", DEPLOY, "--node-policy", "budget=3", "--out", "{tmp}/run"],
     "--node-policy 'budget=3': expected KEY=VALUE with KEY one of privacy-mode"),
    ("deploy-local-node-policy-mode", ["deploy-local", DEPLOY, "--node-policy", "privacy-mode=weak", "--out",
                                       "{tmp}/run"], "--node-policy: node config privacy-mode: expected one of"),
    ("deploy-local-node-policy-cap", ["deploy-local", DEPLOY, "--max-epsilon", "0", "--out", "{tmp}/run"],
     "--node-policy: node config max-epsilon: must be > 0"),
    ("audit-run-missing", _with({"l.sqlite": ""}, ["audit", "{tmp}/l.sqlite", "--run", "{tmp}/norun", "--out", OUT]),
     "--run {tmp}/norun: no results.json or checkpoint.pt there"),
    ("audit-run-not-a-run", _with({"l.sqlite": "", "run/results.json": "{not json"},
                                  ["audit", "{tmp}/l.sqlite", "--run", "{tmp}/run", "--out", OUT]),
     "--run {tmp}/run: not a readable fedmeta run"),
    # images: one line for each way a hospital's scans can be wrong
    ("images-wrong-rank", _images(_scans(images=__import__("numpy").zeros((30, 64)))),
     "{tmp}/scans/beta.npz: images: images of shape (30, 64); expected (N, H, W) or (N, C, H, W)"),
    ("images-wrong-dtype", _images(_scans(images=__import__("numpy").full((30, 8, 8), "x"))),
     "{tmp}/scans/beta.npz: images: images of dtype <U1; expected numbers (uint8, int or float)"),
    ("images-nan-pixel", _images(_nan_scans()), "{tmp}/scans/beta.npz: images: image 4 has NaN or infinite pixels"),
    ("images-sizes-differ", _images(_scans(size=9)),
     "{tmp}/scans: the hospitals' images differ in size: alpha (1, 8, 8), beta (1, 9, 9), gamma (1, 8, 8)"),
    ("images-label-outside", _images(_scans(labels=__import__("numpy").arange(30) % 3)),
     "{tmp}/scans/beta.npz: labels: label 2: label must be 0 or 1"),
    ("images-multiclass-label-outside", _images(_scans(labels=__import__("numpy").arange(30) % 3 + 1),
                                                "--set", "task.kind='multiclass'", "--set", "task.classes=3"),
     "{tmp}/scans/beta.npz: labels: label 3:"),
    ("images-labels-count", _images(_scans(labels=__import__("numpy").zeros(29, dtype=int))),
     "{tmp}/scans/beta.npz: labels: labels of shape (29,); expected (30,) or (30, 1), one per image"),
    ("images-no-labels", _images(_scans(labels=None)), "{tmp}/scans/beta.npz: no 'labels' array (it has images)"),
    ("images-not-npz", _images(b"not a zip"), "{tmp}/scans/beta.npz: not a readable .npz file of plain arrays"),
    ("images-class-missing-for-shots", _images(_scans(labels=(__import__("numpy").arange(30) < 3).astype(int))),
     "hospital 'beta': too few examples for the configured shots"),
    ("images-mlp-model", _images(_scans(), "--set", "model.kind='mlp'"),
     "model.kind = \"mlp\" takes feature vectors; this data has shape (1, 8, 8)"),
    ("convnet-on-a-table", _sim("--set", "model.kind='convnet'"),
     "model.kind = \"convnet\" takes images (channels, height, width); this data has examples of shape (8,)"),
    # survival rows (Fed-TCGA-BRCA's layout)
    ("survival-negative-time", _with({"t/brca.csv": "pid,age,E,T\np1,50,1,12\np2,61,0,-3\n",
                                      "t/train_test_split.csv": "pid,fold,fold2\np1,train,train_0\np2,test,test_0\n"},
                                     ["simulate", str(ROOT / "configs" / "tcga-brca.toml"), "--data-dir", "{tmp}/t",
                                      "--out", OUT]),
     "{tmp}/t/brca.csv: line 3, column 'T': survival time must be >= 0, got -3"),
    ("survival-event-not-binary", _with({"t/brca.csv": "pid,age,E,T\np1,50,2,12\n",
                                         "t/train_test_split.csv": "pid,fold,fold2\np1,train,train_0\n"},
                                        ["simulate", str(ROOT / "configs" / "tcga-brca.toml"), "--data-dir",
                                         "{tmp}/t", "--out", OUT]),
     "{tmp}/t/brca.csv: line 2, column 'E': event must be 0 or 1, got 2"),
    # argparse's own refusals
    ("no-command", [], ARGPARSE),
    ("unknown-command", ["train", CI], ARGPARSE),
    ("seed-not-int", _sim("--seed", "abc"), ARGPARSE),
]


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{ppid}", str(os.getppid()))


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.fixture
def nothing_runs(monkeypatch):
    """A bad input must be refused before any simulation, comparison or deployment starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("a bad input got as far as starting a run")

    for target in ("fedmeta.simulation.simulate", "fedmeta.compare.run_comparison",
                   "fedmeta.deploy.local.LocalDeployment.start", "fedmeta.deploy.processes.ProcessManager.start"):
        monkeypatch.setattr(target, refuse)


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(argv, expected, tmp_path, capsys, nothing_runs):
    args = argv(tmp_path) if callable(argv) else [_fill(a, tmp_path) for a in argv]
    before = _snapshot(tmp_path)
    if expected == ARGPARSE:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        out, err = capsys.readouterr()
        assert exit_.value.code == 2 and "usage: fedmeta" in err
    else:
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 2
        assert len(err.splitlines()) == 1 and err.startswith("fedmeta: error: "), err
        assert _fill(expected, tmp_path) in err, err
    assert "Traceback" not in out + err
    assert _snapshot(tmp_path) == before, "a refused input wrote, changed or removed something"


def test_the_table_is_large_and_its_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    from fedmeta.config import load_config
    from fedmeta.data.sources import load_federation

    argv = _csv("\ufeff" + _good())(tmp_path)
    fed = load_federation(load_config(argv[1], [], argv[3]))
    assert list(fed.names) == ["alpha", "beta", "gamma"]
    assert list(fed.feature_names) == ["age", "bp"]


def test_two_claims_on_one_directory_conflict(tmp_path):
    out = tmp_path / "out"
    with claimed_output_dir(out) as run_dir:
        assert (run_dir / CLAIM).read_text().strip() == str(os.getpid())
        with pytest.raises(FedMetaError, match=rf"--out .*: in use by another fedmeta run \(pid {os.getpid()}\)"):
            with claimed_output_dir(out):
                pass
        assert (run_dir / CLAIM).is_file()  # the refused claim left the first one alone
        (run_dir / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_a_second_process_on_a_claimed_out_is_refused_at_once(tmp_path, capsys, nothing_runs):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from fedmeta.output_dir import claimed_output_dir\n"
                               f"with claimed_output_dir(Path({str(out)!r})):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["simulate", CI, "--out", str(out), "--quiet"]) == 2
        assert capsys.readouterr().err == (f"fedmeta: error: --out {out}: in use by another fedmeta run "
                                           f"(pid {holder.pid}); choose another --out\n")
    finally:
        holder.kill()
        holder.wait()
    assert main(["simulate", CI, "--out", str(out), "--quiet"]) == 2  # killed: its claim is stale
    assert f"left unfinished by a run that is no longer running (pid {holder.pid})" in capsys.readouterr().err


def _fail_in(out: Path, error: BaseException, ledger: bool = True) -> None:
    with pytest.raises(type(error)):
        with claimed_output_dir(out) as run_dir:
            (run_dir / "ledgers").mkdir()
            if ledger:
                (run_dir / "ledgers" / "hospital-01.sqlite").write_bytes(b"spent")
            (run_dir / "model.pt").write_bytes(b"model")
            (run_dir / "plots").mkdir()
            (run_dir / "plots" / "auc.png").write_bytes(b"png")
            raise error


def test_a_failed_run_keeps_only_its_ledgers_and_says_why(tmp_path, capsys):
    out = tmp_path / "out"
    _fail_in(out, RuntimeError("the server died"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        FAILED, "ledgers", "ledgers/hospital-01.sqlite"]
    assert (out / "ledgers" / "hospital-01.sqlite").read_bytes() == b"spent"
    note = (out / FAILED).read_text()
    assert len(note.splitlines()) == 1 and "the server died" in note and "privacy" in note
    assert note.strip() in capsys.readouterr().err


def test_a_failed_run_without_ledger_entries_leaves_nothing(tmp_path):
    out = tmp_path / "deep" / "out"
    _fail_in(out, RuntimeError("boom"), ledger=False)
    assert not (tmp_path / "deep").exists()


def test_a_cancelled_run_keeps_its_ledgers(tmp_path):
    out = tmp_path / "out"
    _fail_in(out, KeyboardInterrupt())
    assert (out / "ledgers" / "hospital-01.sqlite").read_bytes() == b"spent"
    assert "cancelled" in (out / FAILED).read_text()
    assert not (out / "model.pt").exists() and not (out / CLAIM).exists()


def test_resume_takes_over_a_dead_runs_claim_and_keeps_everything_on_failure(tmp_path, monkeypatch):
    from fedmeta.config import load_config
    from fedmeta.simulation import resume_simulation

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / CLAIM).write_text(f"{dead.pid}\n")
    (out / "checkpoint.pt").write_bytes(b"round 1")
    seen = []

    def crash(cfg, run_dir, **kwargs):
        seen.append((run_dir / CLAIM).read_text().strip())
        raise RuntimeError("killed again")

    monkeypatch.setattr("fedmeta.simulation.simulate", crash)
    with pytest.raises(RuntimeError):
        resume_simulation(load_config(CI), out)
    assert seen == [str(os.getpid())]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # still resumable, claim dropped


def test_certs_that_fail_midway_leave_the_old_credentials(tmp_path, capsys, monkeypatch):
    out = tmp_path / "certs"
    assert main(["deploy", "certs", str(out), "--hospitals", "a"]) == 0
    before = _snapshot(tmp_path)
    real_open, ours = os.open, []

    def disk_full_at_b(path, *args, **kwargs):  # os.open is global: count only the credentials' files
        if str(path).startswith(str(out)):
            ours.append(path)
            if len(ours) == 13:  # b/node.pub: b/ was created for this run
                raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", disk_full_at_b)
    capsys.readouterr()
    assert main(["deploy", "certs", str(out), "--hospitals", "a", "b", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fedmeta: error: {out}: cannot write the credentials there: No space left on device"]
    assert len(ours) == 13 and (out / "b").name in {Path(p).parent.name for p in ours}
    assert _snapshot(tmp_path) == before  # the old credentials, nothing new
