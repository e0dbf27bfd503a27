"""Flower client mods used by the end-to-end tests: one stages faults, one records every reply.

They run inside the Ray actors that host the ClientApps, so they are classes of an importable
module and write what they see to files.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord


def _round(msg: Message) -> int:
    config = msg.content.get("config") if msg.has_content() else None
    return int(config.get("server-round", 0)) if config is not None else 0


class Faults:
    """A SuperNode that fails: ``plan[(partition, round)]`` is "crash" (dies before training),
    "hang" (never answers in time: sleeps ``hang_s``, then dies) or "nan" (its reply is corrupted
    on the way out). Only training messages are affected."""

    def __init__(self, plan: dict[tuple[int, int], str], hang_s: float):
        self.plan, self.hang_s = plan, hang_s

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        fault = None
        if msg.metadata.message_type == MessageType.TRAIN:
            fault = self.plan.get((int(context.node_config["partition-id"]), _round(msg)))
        if fault == "crash":
            raise RuntimeError("SuperNode crashed")
        if fault == "hang":
            time.sleep(self.hang_s)
            raise RuntimeError("SuperNode hung")
        reply = call_next(msg, context)
        if fault == "nan" and not reply.has_error():
            state = reply.content["arrays"].to_torch_state_dict()
            state[next(iter(state))].view(-1)[0] = float("nan")
            reply.content["arrays"] = ArrayRecord({k: v for k, v in state.items()})
        return reply


def _describe(value: object) -> object:
    if isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            return {"non-finite": repr(value)}
        return value
    return {"type": type(value).__name__, "repr": repr(value)[:80]}


class ReplyRecorder:
    """Writes a description of every reply the wrapped ClientApp produces to ``directory``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        entry: dict = {"type": msg.metadata.message_type, "partition": int(context.node_config["partition-id"]),
                       "round": _round(msg)}
        if reply.has_error():
            entry["error"] = {"code": reply.error.code, "reason": reply.error.reason}
        else:
            records = {}
            for name, record in reply.content.items():
                if isinstance(record, ArrayRecord):
                    desc = {"kind": "arrays", "items": {
                        k: {"shape": list(t.shape), "dtype": str(t.dtype), "finite": bool(torch.isfinite(t).all())}
                        for k, t in record.to_torch_state_dict().items()}}
                elif isinstance(record, MetricRecord):
                    desc = {"kind": "metrics", "items": {k: _describe(v) for k, v in record.items()}}
                elif isinstance(record, ConfigRecord):
                    desc = {"kind": "config", "items": {k: _describe(v) for k, v in record.items()}}
                else:
                    desc = {"kind": type(record).__name__}
                records[name] = desc
            entry["records"] = records
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"replies-{os.getpid()}.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        return reply
