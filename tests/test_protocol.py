"""The worker wire: tagged tuples on the wire, typed messages at both ends."""

from __future__ import annotations

import pickle
from multiprocessing import Pipe

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from localbatch._workers.protocol import (
    ChunkDone,
    InitError,
    Load,
    Ready,
    RunChunk,
    Stop,
    decode,
    full_result,
    recv,
    row_error,
    send,
    wire_chunk,
    wire_result,
)

MESSAGES = [
    Load("load", {"path": "/x"}, None),
    Ready("ready", 12, 0.5, ""),
    InitError("init_error", 12, ("ValueError", "bad", "tb"), "printed"),
    RunChunk("chunk", 3, [0, 1], {"a": [1.0, 2.0]}),
    ChunkDone("result", 3, {"index": [0, 1], "errors": None}),
    Stop("stop"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_each_message_crosses_as_a_plain_tuple_and_comes_back_typed(msg) -> None:
    a, b = Pipe()
    send(a, msg)
    data = b.recv_bytes()
    assert type(pickle.loads(data)) is tuple  # the wire names no class
    got = decode(data)
    assert type(got) is type(msg) and got == msg and got[0] == msg.tag
    send(a, msg)
    assert recv(b) == msg


def test_init_error_text_and_row_errors() -> None:
    assert MESSAGES[2].describe() == "init failed: ValueError: bad"

    def user_code() -> None:
        raise KeyError("k")

    try:
        user_code()
    except KeyError as exc:
        etype, message, tb = row_error(exc)
    assert (etype, message) == ("KeyError", "'k'")
    assert "in user_code" in tb and tb.endswith("KeyError: 'k'\n")


rows = st.one_of(
    st.tuples(st.integers(-(2**62), 2**62), st.integers(0, 50)).map(
        lambda t: np.arange(t[0], t[0] + t[1], dtype=np.int64)),                # consecutive
    hnp.arrays(np.int64, st.integers(0, 50), elements=st.integers(-(2**63), 2**63 - 1)),
    st.lists(st.integers(0, 10**6), max_size=20).map(lambda v: np.asarray(v, np.int64)),
)
times = hnp.arrays(np.float64, 50, elements=st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None)
@given(rows, times, times, st.booleans())
def test_a_chunk_and_its_result_cross_the_wire_and_come_back_whole(indices, started, other,
                                                                   shifted) -> None:
    """Row numbers (consecutive or not) and end times (each the next start, or not)
    come back bit for bit after the wire's short forms and a real pickle."""
    n = len(indices)
    started = started[:n].copy()
    ended = np.append(started[1:], other[0]) if shifted and n else other[:n].copy()
    msg = decode(pickle.dumps(tuple(wire_chunk(RunChunk("chunk", 1, indices, {"a": []}))),
                              protocol=5))
    assert list(msg.indices) == indices.tolist()
    result = {"index": indices, "started": started, "ended": ended, "errors": None}
    sent = decode(pickle.dumps(tuple(ChunkDone("result", 1, wire_result(result))), protocol=5))
    assert "index" not in sent.result
    back = full_result(sent.result, msg.indices)
    assert back["index"].dtype == np.int64 and back["index"].tolist() == indices.tolist()
    assert back["ended"].view(np.uint64).tolist() == ended.view(np.uint64).tolist()
    assert back["started"].view(np.uint64).tolist() == started.view(np.uint64).tolist()
