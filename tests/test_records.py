"""Arrays received from a peer decode exactly as ``np.load`` reads them, whatever their bytes hold."""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedmeta.flower.records import RecordError, params_to_record, record_to_params


def _flower(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return record.to_torch_state_dict(keep_input=True)


def _array(values: np.ndarray, data: bytes | None = None) -> Array:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype="numpy.ndarray",
                 data=buffer.getvalue() if data is None else data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_honest_record_decodes_as_flower_does(dtype):
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(64, 30, generator=g, dtype=dtype), "b": torch.randn(64, generator=g, dtype=dtype),
              "scale": torch.randn((), generator=g, dtype=dtype), "conv": torch.randn(8, 1, 3, 3, generator=g, dtype=dtype)}
    record = params_to_record(params)
    ours = record_to_params(record, params)
    for k, v in _flower(record).items():
        assert ours[k].dtype == dtype and torch.equal(ours[k], v) and torch.equal(ours[k], params[k])


def test_other_bytes_are_parsed_as_np_load_reads_them():
    like = {"w": torch.zeros(3, 4)}
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    wider = np.arange(12, dtype=np.float64).reshape(3, 4)
    for values in (fortran, wider):
        record = ArrayRecord(OrderedDict(w=_array(values)))
        got = record_to_params(record, like)["w"]
        assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(values.astype(np.float32)))
    honest = _array(np.arange(12, dtype=np.float32).reshape(3, 4))
    trailing = ArrayRecord(OrderedDict(w=_array(np.zeros(1, np.float32), data=honest.data + b"\0" * 4)))
    assert torch.equal(record_to_params(trailing, like)["w"], _flower(trailing)["w"])
    truncated = ArrayRecord(OrderedDict(w=_array(np.zeros(1, np.float32), data=honest.data[:-4])))
    with pytest.raises(RecordError, match="cannot decode"):
        record_to_params(truncated, like)
    other_shape = ArrayRecord(OrderedDict(w=_array(np.zeros((4, 3), np.float32))))
    with pytest.raises(RecordError, match="shape"):
        record_to_params(other_shape, like)
