"""Hostile frames on the engine's and the frontend's sockets (random bytes, random msgpack, truncated and wrong-type
messages, requests with hostile fields): the engine drops or refuses each and goes on serving."""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time

import msgspec
import zmq

from engine import InferenceEngine
from engine.loaders.random_weights import random_checkpoint
from engine.model.model_config import ModelConfig
from engine.process.loop import EngineLoop
from frontend.client import EngineClient
from frontend.text_deltas import add_entry
from shared import ipc
from shared.config import EngineConfig
from shared.messages import (
    AbortRequest,
    EngineReady,
    EngineRequest,
    EngineStats,
    FromEngine,
    GenerateRequest,
    Hello,
    Shutdown,
    TextDeltas,
    TokenDeltas,
    TokenizeResult,
    WorkerHeartbeat,
    WorkerReady,
)
from shared.sampling import FinishReason, SamplingParams

FRAMES_PER_SOCKET = 300
TINY = ModelConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=32, intermediate_size=64,
                   num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                   max_position_embeddings=128, tie_word_embeddings=True)


def _hostile_frames(rng: random.Random, instance: int) -> list[bytes]:
    valid = ipc.encode(EngineRequest(1, [1, 2, 3], SamplingParams(max_tokens=2), 7, engine_instance=instance))
    frames = []
    for _ in range(FRAMES_PER_SOCKET):
        kind = rng.randrange(6)
        if kind == 0:
            frames.append(rng.randbytes(rng.randrange(0, 64)))
        elif kind == 1:
            frames.append(msgspec.msgpack.encode([rng.random(), "x" * rng.randrange(9), {"a": [None]}]))
        elif kind == 2:
            frames.append(valid[:rng.randrange(len(valid))])
        elif kind == 3:  # a type this socket never takes
            frames.append(ipc.encode(TextDeltas()))
        elif kind == 4:  # a request whose fields are hostile
            prompt = rng.choice([[], [-1], [10**6], [1] * 500, [2**40]])
            frames.append(ipc.encode(EngineRequest(rng.randrange(-5, 2**62), prompt,
                                                   SamplingParams(max_tokens=rng.choice([1, 10**6])), 7,
                                                   [rng.randrange(-3, 70)], instance)))
        else:
            frames.append(ipc.encode(AbortRequest(rng.randrange(-(2**63), 2**63))))
    return frames


def test_the_engine_survives_hostile_frames_and_still_serves():
    engine = InferenceEngine.from_checkpoint(random_checkpoint(TINY), EngineConfig(num_kv_blocks=64, dtype="float32"))
    run_dir = tempfile.mkdtemp(prefix="forge-test-")
    router, pull = f"ipc://{run_dir}/engine", f"ipc://{run_dir}/engine-pull"
    ready = EngineReady("m", 16, 64, 128, "{}", None, None, None, instance=12345)
    loop = EngineLoop(engine.core, ready, pull, router)
    thread = threading.Thread(target=loop.run)
    thread.start()
    context = zmq.Context()
    to_engine = ipc.make_socket(context, zmq.PUSH, pull, False)
    try:
        worker = ipc.Inbox(ipc.make_socket(context, zmq.DEALER, router, False, ipc.identity_of(7)), FromEngine)
        stranger = ipc.make_socket(context, zmq.DEALER, router, False, ipc.identity_of(8))
        ipc.send(worker.socket, Hello(7, "worker"))  # first the engine is up (bound) and knows worker 7
        assert worker.socket.poll(30_000) and isinstance(worker.recv()[1], EngineReady)
        rng = random.Random(0)
        for frame in _hostile_frames(rng, ready.instance):
            to_engine.send(frame)
            stranger.send(rng.choice([frame, rng.randbytes(16), ipc.encode(Shutdown())]))
        ipc.send(to_engine, EngineRequest(999, [5, 6, 7], SamplingParams(max_tokens=3, temperature=0.0), 7,
                                          engine_instance=ready.instance))
        finished = None
        deadline = time.monotonic() + 60
        while finished is None and time.monotonic() < deadline:
            if worker.socket.poll(200):
                _, message = worker.recv()
                if isinstance(message, TokenDeltas) and 999 in message.rids:
                    row = message.rids.index(999)
                    finished = message.finish[row] or None
        assert finished == 2, "the valid request after the hostile frames did not end with its length"  # LENGTH
        assert thread.is_alive()
    finally:
        ipc.send(to_engine, Shutdown())
        thread.join(30)
        context.destroy(linger=0)
    assert not thread.is_alive()


def test_the_frontend_survives_hostile_frames_from_its_worker_and_still_routes(tmp_path):
    """The frontend's worker socket, from a registered worker with a request in flight: random
    bytes, random msgpack, columnar messages whose columns disagree (naming the live request),
    answers to requests nobody sent; then the request's real end still reaches its stream."""
    async def run() -> None:
        client = EngineClient(f"ipc://{tmp_path}/workers", max_in_flight=8)
        await client.start()
        context = zmq.Context()
        try:
            worker = ipc.make_socket(context, zmq.DEALER, client.address, False, ipc.identity_of(5))
            ipc.send(worker, WorkerReady(5, "m", 128))
            ipc.send(worker, WorkerHeartbeat(5, 0, 0.0, EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, 0.0)))
            deadline = time.monotonic() + 10
            while not client.is_ready and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stream = client.submit(lambda rid: GenerateRequest(rid, SamplingParams()))
            rng = random.Random(1)
            lying = msgspec.msgpack.encode(["TextDeltas", [stream.rid, stream.rid + 1], ["x"], [0], [], [], [], [],
                                            [], [], []])
            for _ in range(FRAMES_PER_SOCKET):
                worker.send(rng.choice([
                    rng.randbytes(rng.randrange(0, 64)), lying, msgspec.msgpack.encode({"a": rng.random()}),
                    ipc.encode(TokenizeResult(rng.randrange(2**62), [1], "x", "")),
                ]))
            end = TextDeltas()
            add_entry(end, stream.rid, "done", FinishReason.LENGTH, num_output_tokens=1)
            ipc.send(worker, end)
            event = await asyncio.wait_for(stream.queue.get(), timeout=10)
            assert (event.text, event.finish) == ("done", FinishReason.LENGTH)
            assert all(not task.done() for task in client._tasks)
        finally:
            await client.stop()
            context.destroy(linger=0)

    asyncio.run(run())
