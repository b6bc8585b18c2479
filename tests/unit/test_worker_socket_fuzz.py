"""Hostile frames on a tokenizer worker's sockets, from a fake frontend and a fake engine it
registered with (random bytes, random msgpack, wrong-type and truncated messages, requests and
token deltas with hostile fields): the worker drops or refuses each, keeps running, and then
serves a valid request from end to end."""

from __future__ import annotations

import random
import threading
import time

import msgspec
import zmq

from engine.process.serving import announcement
from frontend.tokenizer_worker import TokenizerWorker
from shared import ipc
from shared.messages import (
    AbortRequest,
    ChatMessage,
    EngineRequest,
    EngineStats,
    GenerateRequest,
    Hello,
    Shutdown,
    TextDeltas,
    ToEngineRouter,
    ToFrontend,
    TokenDeltas,
    TokenizeRequest,
    WorkerReady,
)
from shared.sampling import FinishReason, SamplingParams, TokenLogprob

FRAMES_PER_SIDE = 300
WORKER_ID = 3


def _from_frontend(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:
        return msgspec.msgpack.encode([rng.random(), "x" * rng.randrange(9), {"a": [None]}])
    if kind == 2:
        return ipc.encode(GenerateRequest(rng.randrange(2**40), SamplingParams(max_tokens=rng.choice([1, 10**9])),
                                          prompt_ids=rng.choice([[], [-1], [10**9], [1] * 100_000, [2**62]])))
    if kind == 3:
        return ipc.encode(GenerateRequest(rng.randrange(2**40), SamplingParams(), messages=[
            ChatMessage(rng.choice(["user", "tool", "robot", ""]), "x" * rng.randrange(50))],
            resume_ids=rng.choice([[], [10**9], [-5]]), resume_chars=rng.randrange(-5, 10**6)))
    if kind == 4:
        return ipc.encode(TokenizeRequest(rng.randrange(2**40), token_ids=rng.choice([[10**9], [-1], [2**62], [5]])))
    return ipc.encode(AbortRequest(rng.randrange(-(2**63), 2**63)))


def _from_engine(rng: random.Random, live_engine_rid: int) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:
        return ipc.encode(EngineStats(rng.randrange(-9, 9), 0, rng.random() * 1e9, -1, -1, 0, 0, 0, -1.0))
    rid = rng.choice([live_engine_rid, rng.randrange(-(2**63), 2**63)])
    new_ids = rng.choice([[10**9], [-1], [2**62], [], [5, 6]])
    finish = rng.choice([0, 99, -1, int(FinishReason.LENGTH)])
    logprob = TokenLogprob(10**9, float("nan"), [-3], [1.0])
    return ipc.encode(TokenDeltas([rid], [new_ids], [finish], [-1], [10**9], ["x" * rng.randrange(3)],
                                  [rng.choice([[], [logprob]])], [rng.randrange(-9, 999)],
                                  [rng.choice([[], [logprob]])]))


def _receive(inbox: ipc.Inbox, kind: type, timeout_s: float = 30.0, match=lambda message: True):
    """(identity, message): the next `kind` matching `match`, skipping everything else."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if inbox.socket.poll(200):
            try:
                identity, message = inbox.recv()
            except msgspec.MsgspecError:
                continue
            if isinstance(message, kind) and match(message):
                return identity, message
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s")


def test_a_worker_survives_hostile_frames_from_both_sides_and_still_serves(smollm2, tmp_path):
    ready = announcement(smollm2, "m")
    context = zmq.Context()
    frontend = ipc.Inbox(ipc.make_socket(context, zmq.ROUTER, f"ipc://{tmp_path}/workers", True), ToFrontend)
    engine = ipc.Inbox(ipc.make_socket(context, zmq.ROUTER, f"ipc://{tmp_path}/engine", True), ToEngineRouter)
    engine_pull = ipc.Inbox(ipc.make_socket(context, zmq.PULL, f"ipc://{tmp_path}/engine-pull", True), EngineRequest)
    worker = TokenizerWorker(WORKER_ID, f"ipc://{tmp_path}/workers", f"ipc://{tmp_path}/engine")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        worker_at_engine, _ = _receive(engine, Hello)
        engine.socket.send_multipart([worker_at_engine, ipc.encode(ready)])
        worker_at_frontend, _ = _receive(frontend, WorkerReady)
        # a live request first, so that hostile token deltas can name it
        frontend.socket.send_multipart([worker_at_frontend, ipc.encode(GenerateRequest(
            7, SamplingParams(max_tokens=50, temperature=0.0), prompt="Hello"))])
        _, live = _receive(engine_pull, EngineRequest, match=lambda r: r.rid // 64 == 7)
        rng = random.Random(0)
        for _ in range(FRAMES_PER_SIDE):
            frontend.socket.send_multipart([worker_at_frontend, _from_frontend(rng)])
            engine.socket.send_multipart([worker_at_engine, _from_engine(rng, live.rid)])
        assert thread.is_alive(), "hostile frames killed the worker"
        frontend.socket.send_multipart([worker_at_frontend, ipc.encode(GenerateRequest(
            42, SamplingParams(max_tokens=2, temperature=0.0), prompt="Hi"))])
        _, request = _receive(engine_pull, EngineRequest, match=lambda r: r.rid // 64 == 42)
        token = smollm2.tokenizer.encode(" there", add_special_tokens=False)[0]
        engine.socket.send_multipart([worker_at_engine, ipc.encode(TokenDeltas(
            [request.rid], [[token]], [int(FinishReason.LENGTH)], [len(request.prompt_ids)], [0], [""], [[]], [0],
            [[]]))])
        _, text = _receive(frontend, TextDeltas, match=lambda d: 42 in d.rids)
        row = text.rids.index(42)
        assert (text.texts[row], text.finish[row]) == (" there", int(FinishReason.LENGTH))
        assert thread.is_alive()
    finally:
        if thread.is_alive() and "worker_at_frontend" in locals():
            frontend.socket.send_multipart([worker_at_frontend, ipc.encode(Shutdown())])
        thread.join(10)
        context.destroy(linger=0)
    assert not thread.is_alive()
