"""The hospital side: a Flower ClientApp that meta-trains and evaluates on one hospital's data.

Three handlers: ``query`` (who am I: hospital, role, feature count), ``train`` (local meta-training,
replies with the meta-update) and ``evaluate`` (few-shot adaptation, replies with AUC/accuracy).
Only model-shaped arrays and scalar metrics leave the hospital.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmeta.config import ExperimentConfig
from fedmeta.data.hospital import Hospital
from fedmeta.data.sources import OwnHospital, load_federation, load_hospital
from fedmeta.errors import FedMetaError
from fedmeta.evaluation import NonFiniteModelError, evaluate_few_shot, score_params, scored_splits
from fedmeta.flower.records import RecordError, params_to_record, record_to_params
from fedmeta.flower.reply_codes import BAD_ARRAYS, BUDGET_EXHAUSTED, EVAL_FAILED, HELD_OUT, LEDGER_INVALID, POLICY_REFUSED
from fedmeta.flower.run_config import config_from_run_config
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.personal_state import PersonalStore
from fedmeta.meta.functional import Params, params_of
from fedmeta.local_round import train_hospital_round
from fedmeta.models import build_model, pick_device
from fedmeta.privacy.ledger import LedgerError
from fedmeta.privacy.policy import HospitalPolicy, PolicyRefusal, negotiate, policy_from_config, policy_from_node_config
from fedmeta.tasks import build_task, wire_name

__all__ = ["build_client_app"]

log = logging.getLogger("fedmeta.client")


@dataclass
class _Site:
    cfg: ExperimentConfig
    hospital: Hospital
    index: int
    held_out: bool
    input_shape: tuple[int, ...]
    features: tuple[str, ...]  # the columns of a table (none for images): the run records its schema
    device: torch.device
    deployed: bool  # the config came from the run config (the coordinator's): the node config holds the policy

    def policy(self, node_config: dict) -> HospitalPolicy:
        """Deployed: the node config's (safe defaults); simulated: the config's per-hospital settings."""
        return policy_from_node_config(node_config) if self.deployed else policy_from_config(self.cfg, self.hospital.name)


def _node_partition(node_config: dict) -> int | None:
    value = node_config.get("partition-id")
    if value is None or value == "":
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise FedMetaError(f"node config partition-id: expected an integer, got {value!r}") from None


def _load_own(cfg: ExperimentConfig, name: str, node: dict, deployed: bool) -> OwnHospital:
    """A named node's own hospital. Deployed, its data directory is the node config's alone, and a
    failure is reported without its detail: the message would carry the hospital's data (a cell,
    class counts, file names) to the coordinator, whose run config chose the data settings."""
    data_dir = str(node.get("data-dir", "") or "")
    if not deployed:
        return load_hospital(cfg, name, data_dir, _node_partition(node))
    try:
        return load_hospital(cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": ""})}), name,
                             data_dir, _node_partition(node))
    except Exception as err:  # noqa: BLE001 - whatever it was, its text stays on the node
        log.error("hospital %s: cannot load its data: %s", name, err)
        raise FedMetaError(f"hospital {name}: cannot load its data with this run's data settings "
                           "(the reason is in the node's log; it is not sent)") from None


def _site(cfg: ExperimentConfig, context: Context, deployed: bool) -> _Site:
    """This node's hospital. Deployment: node config ``hospital`` (+ ``data-dir`` for csv / uci-heart)
    loads that hospital alone; simulation: ``partition-id`` indexes the whole federation."""
    node = context.node_config
    name = node.get("hospital")
    if name:
        hospital, input_shape, index, features = _load_own(cfg, str(name), node, deployed)
    else:
        fed = load_federation(cfg)
        index = int(node["partition-id"])
        hospital, input_shape, features = fed.hospitals[index], fed.input_shape, fed.feature_names
    return _Site(cfg, hospital, index, hospital.name in cfg.data.held_out, input_shape, features, pick_device(),
                 deployed)


@lru_cache(maxsize=8)
def _template(config_json: str, input_shape: tuple[int, ...], device: str) -> tuple[torch.nn.Module, Params]:
    """The model a message's parameters are used with, and the state it expects, built once per
    config in a process rather than for every message: the parameters always come from the
    message, and the model, their functional template, is never changed."""
    from fedmeta.config import config_from_json

    cfg = config_from_json(config_json)
    algorithm = get_algorithm(cfg.meta.algorithm)
    model = build_model(cfg.model, input_shape, cfg.seed,
                        algorithm.model_outputs(build_task(cfg.task), cfg.meta)).to(torch.device(device))
    return model, algorithm.initial_state(params_of(model), cfg.meta)


def _model_and_params(msg: Message, site: _Site) -> tuple[torch.nn.Module, Params] | Message:
    """The model with the received global parameters, or an error reply if they do not fit it."""
    model, expected = _template(site.cfg.to_json(), tuple(site.input_shape), str(site.device))
    try:
        return model, record_to_params(msg.content["arrays"], expected, site.device)
    except RecordError as err:
        reason = f"hospital {site.hospital.name}: rejected parameters: {err}"
        log.error(reason)
        return Message(Error(code=BAD_ARRAYS, reason=reason), reply_to=msg)


def ledger_home() -> Path:
    """Where a deployed node keeps its ledger when its node config names none: on the node's side."""
    return Path(os.environ.get("FEDMETA_HOME") or Path.home() / ".fedmeta")


class _ClientApp(ClientApp):
    """Pickled as the arguments that build it: the simulation engine sends the ClientApp to a
    hospital's actor with every message, and pickling its closures by value was a tenth of the
    coordinating process's time at 100 hospitals."""

    def __init__(self, arguments: tuple[str, str, float]):
        super().__init__()
        self.arguments = arguments

    def __reduce__(self) -> tuple:
        return _rebuilt_client_app, self.arguments


@lru_cache(maxsize=4)
def _rebuilt_client_app(config_json: str, ledger_dir: str, noise_scale: float) -> ClientApp:
    """The ClientApp ``build_client_app`` made, in an actor's process (built once per process)."""
    from fedmeta.config import config_from_json

    return build_client_app(config_from_json(config_json) if config_json else None,
                            Path(ledger_dir) if ledger_dir else None, noise_scale)


def build_client_app(config: ExperimentConfig | None = None, ledger_dir: Path | None = None,
                     _noise_scale: float = 1.0) -> ClientApp:
    """A ClientApp for ``config``, or for the config named in the run config when ``None``.

    A hospital's privacy ledger is the node config's ``ledger`` path, else (deployment)
    ``$FEDMETA_HOME/ledgers/<hospital>.sqlite`` (default ``~/.fedmeta``), else (simulation)
    ``<ledger_dir>/<hospital>.sqlite``. Nothing in the run config chooses a deployed node's ledger.
    """
    app = _ClientApp((config.to_json() if config is not None else "", str(ledger_dir or ""), _noise_scale))
    deployed = config is None

    def ledger_path(site: _Site, context: Context) -> Path:
        if context.node_config.get("ledger"):
            return Path(str(context.node_config["ledger"]))
        if deployed:
            return ledger_home() / "ledgers" / f"{site.hospital.name}.sqlite"
        return (ledger_dir or Path("runs") / "ledgers") / f"{site.hospital.name}.sqlite"

    def site_of(context: Context) -> _Site:
        torch.set_num_threads(1)  # one simulated hospital per Ray CPU
        return _site(config or config_from_run_config(context.run_config), context, deployed)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        site = site_of(context)
        identity = ConfigRecord(
            {"hospital": site.hospital.name, "role": "held-out" if site.held_out else "train",
             "device": str(site.device), "task": site.cfg.task.kind, "features": list(site.features)}
        )
        sizes = MetricRecord({"input-shape": list(site.input_shape),
                              "n-outputs": build_task(site.cfg.task).n_outputs,
                              "num-examples": site.hospital.n_train})
        return Message(RecordDict({"identity": identity, "sizes": sizes}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = site_of(context)
        cfg = site.cfg
        if site.held_out:
            return Message(
                Error(code=HELD_OUT, reason=f"hospital {site.hospital.name} is held out and never trains"),
                reply_to=msg,
            )
        received = _model_and_params(msg, site)
        if isinstance(received, Message):
            return received
        model, params = received
        config = msg.content["config"]
        server_round = int(config.get("server-round", 0))
        anchor = (int(config.get("ledger-rows", 0) or 0), str(config.get("ledger-head", "") or ""))
        name = site.hospital.name
        t0 = time.perf_counter()
        try:
            if site.deployed and cfg.audit.canaries:
                raise PolicyRefusal(f"hospital {name} is deployed: audit canaries are for simulated audits only")
            plan = negotiate(site.policy(context.node_config), cfg, hospital=name, n_train=site.hospital.n_train)
            outcome = train_hospital_round(
                cfg, site.hospital, site.index, model, params, plan=plan, server_round=server_round,
                run_id=str(context.run_id), ledger_path=ledger_path(site, context), device=site.device,
                anchor=anchor, noise_scale=_noise_scale)
        except (PolicyRefusal, FedMetaError) as err:
            code = LEDGER_INVALID if isinstance(err, LedgerError) else POLICY_REFUSED
            reason = str(err) if name in str(err) else f"hospital {name}: {err}"
            log.warning(reason)
            return Message(Error(code=code, reason=reason), reply_to=msg)
        if outcome.result is None:
            log.warning(outcome.declined)
            return Message(Error(code=BUDGET_EXHAUSTED, reason=outcome.declined), reply_to=msg)
        result, privacy = outcome.result, outcome.privacy
        seconds = time.perf_counter() - t0
        log.info("hospital %s round %d: %s on %s in %.2fs", name, server_round, cfg.meta.algorithm, site.device,
                 seconds)
        metrics = MetricRecord({
            "num-examples": site.hospital.n_train,
            # The loss on private records is not noised, and the training time depends on them (a
            # record with a non-finite gradient is drawn again): under DP both stay at the hospital.
            **({} if privacy else {"train-loss": result.train_loss, "train-seconds": seconds}),
            "episodes": result.episodes,
            "on-gpu": int(site.device.type == "cuda"),
            **privacy,
        })
        content = RecordDict({"arrays": params_to_record(result.update), "metrics": metrics})
        if privacy:  # where the spend is recorded: the server keeps it to detect a rolled-back ledger
            rows, head = outcome.ledger
            content["ledger"] = ConfigRecord({"rows": rows, "head": head, "run-id": str(context.run_id),
                                              "accountant": plan.accountant if plan else ""})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = site_of(context)
        cfg = site.cfg
        received = _model_and_params(msg, site)
        if isinstance(received, Message):
            return received
        model, params = received
        server_round = int(msg.content["config"].get("server-round", 0))
        task = build_task(cfg.task)
        try:  # the reported split (test; validation in tuning trials) and validation for model selection
            algorithm = get_algorithm(cfg.meta.algorithm)
            personal = (PersonalStore(ledger_path(site, context), cfg).load(site.device)
                        if algorithm.personal and not site.held_out else None)
            if personal is not None:  # a hospital's personal model is its adaptation: scored as it is
                mine = algorithm.personal_params(params, personal)
                scores = {split: score_params(model, mine, site.hospital, site.device, task, split)
                          for split in scored_splits(site.hospital, cfg.eval)}
            else:
                scores = evaluate_few_shot(model, params, site.hospital, task=task, eval_cfg=cfg.eval,
                                           meta_cfg=cfg.meta, seed=cfg.seed, device=site.device,
                                           splits=scored_splits(site.hospital, cfg.eval),
                                           participant=not site.held_out, algorithm=algorithm)
            unadapted = score_params(model, algorithm.model_params(params), site.hospital, site.device, task,
                                     cfg.eval.split) if algorithm.predicts_unadapted else None
        except NonFiniteModelError as err:
            return Message(Error(code=EVAL_FAILED, reason=str(err)), reply_to=msg)
        score, val = scores[cfg.eval.split], scores.get("validation")
        validation = {**{f"val-{wire_name(k)}": v for k, v in val.metrics.items()},
                      "val-pairs": val.pairs} if val else {}
        metrics = MetricRecord({
            "num-examples": int(site.hospital.split(cfg.eval.split)[1].shape[0]),
            **{wire_name(k): v for k, v in score.metrics.items()},
            **({f"{wire_name(task.primary)}-unadapted": unadapted.value} if unadapted else {}),
            **validation,
            "held-out": int(site.held_out),
            "server-round": server_round,
        })
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app
