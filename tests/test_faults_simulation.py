"""Faults on Flower's real simulation engine (Ray): SuperNodes that crash, hang past the reply
timeout or send a corrupted update in chosen rounds, and a record of every reply the hospitals'
ClientApps produce, checked against what may leave a hospital."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from fedmeta.config import load_config
from fedmeta.flower.reply_codes import BAD_ARRAYS, BUDGET_EXHAUSTED, EVAL_FAILED, HELD_OUT, LEDGER_INVALID, POLICY_REFUSED
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.simulation import simulate
from flower_mods import Faults, ReplyRecorder

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"
TIMEOUT_S = 5.0
HOSPITALS = [f"hospital-0{i}" for i in range(1, 6)]
# (partition, round) -> fault; partition i is hospital-0{i+1}.
PLAN = {(1, 1): "crash", (2, 2): "hang", (3, 2): "nan"}


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    cfg = load_config(CI, ["federation.min_train_nodes=2", f"federation.reply_timeout_s={TIMEOUT_S}"])
    logs = _Capture()
    logging.getLogger("fedmeta.server").addHandler(logs)
    try:
        results = simulate(cfg, tmp / "run", progress=False,
                           _client_mods=[Faults(PLAN, hang_s=TIMEOUT_S + 2), ReplyRecorder(tmp / "replies")])
    finally:
        logging.getLogger("fedmeta.server").removeHandler(logs)
    replies = [json.loads(line) for f in sorted((tmp / "replies").glob("*.jsonl")) for line in f.open()]
    return cfg, results, replies, logs.lines


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_rounds_complete_without_the_failed_hospitals_and_results_say_who_missed_which_round(faulty_run):
    _, res, _, logs = faulty_run
    r1, r2, r3 = res["history"]["rounds"]
    assert r1["sampled"] == r2["sampled"] == r3["sampled"] == HOSPITALS
    assert r1["aggregated"] and r2["aggregated"] and r3["aggregated"] and res["rounds_completed"] == 3
    assert r1["replied"] == HOSPITALS and sorted(r1["train"]) == [h for h in HOSPITALS if h != "hospital-02"]
    assert r1["missed"]["hospital-02"]["kind"] == "error"
    assert r1["missed"]["hospital-02"]["reason"].endswith("Message: SuperNode crashed")  # one line, not a traceback
    assert r2["replied"] == [h for h in HOSPITALS if h != "hospital-03"]
    assert sorted(r2["train"]) == ["hospital-01", "hospital-02", "hospital-05"]
    assert r2["missed"]["hospital-03"] == {"kind": "no-reply", "reason": f"no reply within {TIMEOUT_S:g}s"}
    assert r2["missed"]["hospital-04"]["kind"] == "dropped" and "NaN or inf" in r2["missed"]["hospital-04"]["reason"]
    assert not r3["missed"] and sorted(r3["train"]) == HOSPITALS  # the failed hospitals are back
    assert {h: [(m["round"], m["kind"]) for m in ms] for h, ms in res["missed_rounds"].items()} == {
        "hospital-02": [(1, "error")], "hospital-03": [(2, "no-reply")], "hospital-04": [(2, "dropped")]}
    assert any("dropped the reply of hospital hospital-04" in line and "NaN or inf" in line for line in logs)
    assert sorted(res["final"]) == HOSPITALS


# What may leave a hospital, per reply type: record name -> (record kind, allowed keys).
ALLOWED = {
    "query": {"identity": ("config", {"hospital", "role", "device", "task", "features"}),
              "sizes": ("metrics", {"input-shape", "n-outputs", "num-examples"})},
    "train": {"arrays": ("arrays", None), "metrics": ("metrics", {
        "num-examples", "train-loss", "episodes", "train-seconds", "on-gpu", "epsilon", "delta", "noise-multiplier"})},
    "evaluate": {"metrics": ("metrics", {"num-examples", "auc", "accuracy", "brier", "ece", "auc-unadapted",
                                         "held-out", "server-round"})},
}
ERROR_CODES = {BAD_ARRAYS, HELD_OUT, BUDGET_EXHAUSTED, EVAL_FAILED, POLICY_REFUSED, LEDGER_INVALID}


def test_every_reply_holds_only_model_shaped_arrays_and_scalar_metrics(faulty_run):
    cfg, _, replies, _ = faulty_run
    model = {k: list(v.shape) for k, v in params_of(build_model(cfg.model, (cfg.data.synthetic.features,), cfg.seed)).items()}
    counts = {t: sum(1 for r in replies if r["type"] == t) for t in ALLOWED}
    # 5 identity queries; 15 training messages less the crashed and the hung one; 3 x 5 evaluations.
    assert counts == {"query": 5, "train": 13, "evaluate": 15} and len(replies) == 33
    for r in replies:
        where = f"{r['type']} reply of partition {r['partition']} in round {r['round']}"
        if "error" in r:
            assert r["error"]["code"] in ERROR_CODES and isinstance(r["error"]["reason"], str), where
            continue
        allowed = ALLOWED[r["type"]]
        assert set(r["records"]) == set(allowed), where
        for name, rec in r["records"].items():
            kind, keys = allowed[name]
            assert rec["kind"] == kind, f"{where}: {name} is {rec['kind']}"
            if kind == "arrays":
                assert {k: v["shape"] for k, v in rec["items"].items()} == model, where
                assert all(v["dtype"] == "torch.float32" and v["finite"] for v in rec["items"].values()), where
                continue
            assert set(rec["items"]) <= keys, f"{where}: {name} has {sorted(set(rec['items']) - keys)}"
            for key, value in rec["items"].items():
                if key == "input-shape":  # a list: the shape of an example, as the model takes it
                    assert value == {"type": "list", "repr": str([cfg.data.synthetic.features])}, where
                elif key == "features":  # a list: the columns' names, the schema every hospital shares
                    names = [f"x{i}" for i in range(cfg.data.synthetic.features)]
                    assert value == {"type": "list", "repr": str(names)}, where
                elif kind == "metrics":
                    assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}: {key}={value!r}"
                else:
                    assert isinstance(value, str) and len(value) < 64, f"{where}: {key}={value!r}"
        if r["type"] == "query":
            identity = r["records"]["identity"]["items"]
            assert identity["hospital"] == HOSPITALS[r["partition"]] and identity["role"] in ("train", "held-out")
            assert identity["task"] == "binary"
            assert identity["device"] in ("cpu", "cuda", "mps") or identity["device"].startswith("cuda:")
