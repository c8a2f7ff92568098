"""The worker wire: tagged tuples on the wire, typed messages at both ends."""

from __future__ import annotations

import pickle
from multiprocessing import Pipe

import pytest

from localbatch._workers.protocol import (
    ChunkDone,
    InitError,
    Load,
    Ready,
    RunChunk,
    Stop,
    decode,
    recv,
    row_error,
    send,
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
