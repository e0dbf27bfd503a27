"""Chunks of messages per Ray task (``fedmeta.flower.actor_batches``) on Flower's real simulation
engine: the same run as one message per task, and a failing hospital fails only its own reply."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmeta.config import load_config
from fedmeta.flower import actor_batches
from fedmeta.flower.actor_batches import chunk_size
from fedmeta.simulation import simulate
from flower_mods import Faults

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"
HOSPITALS = 12
CRASHED = (5, 1)  # partition 5 (hospital-06) raises in round 1


def test_chunks_shrink_as_the_queue_empties_and_small_queues_go_one_message_per_task():
    assert [chunk_size(q, 2) for q in (1, 2, 8)] == [1, 1, 1]  # up to four per worker: as Flower sends them
    assert chunk_size(100, 2) == 13 and chunk_size(9, 2) == 2 and chunk_size(5, 0) == 2
    queued, chunks = 100, []
    while queued:
        chunks.append(chunk_size(queued, 2))
        queued -= chunks[-1]
    assert sum(chunks) == 100 and chunks == sorted(chunks, reverse=True) and chunks[-8:] == [1] * 8
    assert len(chunks) < 40  # tasks for 100 messages, against 100 with one message per task


def _run(tmp: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int], one_per_task: bool) -> dict:
    def recorded(queued: int, workers: int) -> int:
        sizes.append(1 if one_per_task else chunk_size(queued, workers))
        return sizes[-1]

    monkeypatch.setattr(actor_batches, "chunk_size", recorded)
    cfg = load_config(CI, [f"data.synthetic.hospitals={HOSPITALS}", "federation.rounds=2"])
    return simulate(cfg, tmp / "run", progress=False, _client_mods=[Faults({CRASHED: "crash"}, hang_s=0.0)])


def test_a_chunked_run_equals_one_message_per_task_and_a_crash_fails_only_its_hospital(tmp_path, monkeypatch):
    chunked, single = [], []
    a = _run(tmp_path / "chunked", monkeypatch, chunked, one_per_task=False)
    b = _run(tmp_path / "single", monkeypatch, single, one_per_task=True)
    assert max(chunked) > 1 and max(single) == 1 and len(chunked) < len(single)
    for res in (a, b):
        r1, r2 = res["history"]["rounds"]
        assert sorted(r1["missed"]) == ["hospital-06"] and r1["missed"]["hospital-06"]["kind"] == "error"
        assert r1["missed"]["hospital-06"]["reason"].endswith("Message: SuperNode crashed")
        assert len(r1["train"]) == HOSPITALS - 1 and len(r2["train"]) == HOSPITALS and not r2["missed"]
    assert a["final"] == b["final"]
    losses = [{h: m["train-loss"] for h, m in r["train"].items()} for r in a["history"]["rounds"]]
    assert losses == [{h: m["train-loss"] for h, m in r["train"].items()} for r in b["history"]["rounds"]]
