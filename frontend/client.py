"""EngineClient: the frontend's view of the workers, and one stream per request.

Workers connect to our ROUTER and say WorkerReady; each heartbeat carries the engine's latest
stats (None once the engine has gone quiet). A request goes to the least-loaded live worker and
stays with it. A worker silent for WORKER_SILENCE_S (or replaced by a restart) is dropped and its
requests are replayed to another worker, continuing from the tokens they had streamed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable

import msgspec
import zmq
import zmq.asyncio

from frontend.request_stream import RequestStream, StreamEvent
from frontend.worker_view import Worker
from shared import ipc
from shared.messages import (
    MAX_ATTEMPTS,
    AbortRequest,
    EngineStats,
    GenerateRequest,
    TextDeltas,
    TextLogprob,
    ToFrontend,
    TokenizeResult,
    WorkerHeartbeat,
    WorkerReady,
)
from shared.sampling import FinishReason

WORKER_SILENCE_S = 3.0
ORPHAN_WAIT_S = 30.0  # a dead worker's request waits this long for another worker to take it over
logger = logging.getLogger("forge.frontend")


class Unavailable(Exception):
    """No engine or no live worker: answer 503."""


class QueueFull(Exception):
    """Admission control: answer 429."""


class EngineClient:
    def __init__(self, address: str, max_in_flight: int, curve_dir: str | None = None,
                 engine_stall_timeout_s: float = 60.0, max_queue_wait_s: float | None = None) -> None:
        self.address = address
        self.max_in_flight = max_in_flight
        self.engine_stall_timeout_s = engine_stall_timeout_s
        self.max_queue_wait_s = max_queue_wait_s
        self.draining = False  # shutting down: no new requests
        self.curve_dir = curve_dir  # None: plain sockets
        self.workers: dict[int, Worker] = {}
        self.streams: dict[int, RequestStream] = {}
        self.pending_tokenize: dict[int, tuple[asyncio.Future, Worker]] = {}  # rid -> (answer, worker asked)
        self.engine_stats: EngineStats | None = None
        self.engine_stats_s = 0.0
        self.dead_worker_cpu_seconds = 0.0
        self._rids = itertools.count(1)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.context = zmq.asyncio.Context()
        self.authenticator = ipc.start_authenticator(self.context, self.curve_dir) if self.curve_dir else None
        self.inbox = ipc.Inbox(ipc.make_socket(self.context, zmq.ROUTER, self.address, True, None, self.curve_dir),
                               ToFrontend)
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._watch_workers())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)

    @property
    def is_ready(self) -> bool:
        """A worker is up and hears the engine (workers say so the moment they lose it), and the
        engine's step in progress is not stalled."""
        return any(w.sees_engine for w in self.workers.values()) and not self.engine_stalled

    @property
    def engine_stalled(self) -> bool:
        stats = self.engine_stats
        return stats is not None and stats.step_running_s > self.engine_stall_timeout_s

    @property
    def engine_heartbeat_age_s(self) -> float | None:
        """Seconds since a worker last relayed live engine stats (None: never)."""
        return None if not self.engine_stats_s else time.monotonic() - self.engine_stats_s

    @property
    def num_in_flight(self) -> int:
        return len(self.streams)

    def submit(self, make_request: callable, timeout_s: float | None = None) -> RequestStream:
        """Send `make_request(rid)` (a GenerateRequest) to the least-loaded live worker; it may run
        `timeout_s` seconds (None: no limit)."""
        if self.draining:
            raise Unavailable("the server is shutting down")
        if not self.is_ready:
            raise Unavailable("the engine or its tokenizer workers are not ready")
        if len(self.streams) >= self.max_in_flight:
            raise QueueFull(f"the server is at capacity ({self.max_in_flight} requests in flight); retry later")
        worker = self._least_loaded(w for w in self.workers.values() if w.sees_engine)
        request: GenerateRequest = make_request(next(self._rids))
        request = msgspec.structs.replace(request, params=request.params.seeded())  # replays sample the same
        now = time.monotonic()
        stream = RequestStream(self, request, worker, None if timeout_s is None else now + timeout_s,
                               None if self.max_queue_wait_s is None else now + self.max_queue_wait_s)
        self.streams[request.rid] = stream
        self._send_to(worker, stream)
        return stream

    def _send_to(self, worker: Worker, stream: RequestStream) -> None:
        """Hand `stream`'s request (as it stands) to `worker`."""
        if stream.worker is not worker:  # a replay: the dead worker's count no longer matters, but keep it true
            stream.worker.num_in_flight -= 1
        stream.worker = worker
        worker.num_in_flight += 1
        worker.num_requests_total += 1
        try:
            ipc.send(self.inbox.socket, stream.request, worker.identity)
        except zmq.ZMQError:  # EHOSTUNREACH: it disconnected since its last heartbeat
            self.workers.pop(worker.worker_id, None)
            self._lose_worker(worker, "disconnected")  # the stream waits for a replay to another

    async def tokenize(self, make_request: callable, timeout_s: float = 30.0) -> TokenizeResult:
        """Ask the least-loaded worker to tokenize or detokenize (`make_request(rid)`)."""
        if not self.workers:
            raise Unavailable("no tokenizer worker is ready")
        worker = self._least_loaded(self.workers.values())
        worker.num_requests_total += 1  # spreads tokenize calls over the workers too
        rid = next(self._rids)
        future = asyncio.get_running_loop().create_future()
        self.pending_tokenize[rid] = (future, worker)
        try:
            ipc.send(self.inbox.socket, make_request(rid), worker.identity)
            return await asyncio.wait_for(future, timeout_s)
        except (asyncio.TimeoutError, zmq.ZMQError):
            raise Unavailable("the tokenizer worker did not answer") from None
        finally:
            self.pending_tokenize.pop(rid, None)

    @staticmethod
    def _least_loaded(workers: Iterable[Worker]) -> Worker:
        """Fewest requests in flight; ties go to the one that has served fewer, spreading load."""
        return min(workers, key=lambda w: (w.num_in_flight, w.num_requests_total))

    def abort(self, stream: RequestStream) -> None:
        if stream.worker.worker_id in self.workers:
            try:
                ipc.send(self.inbox.socket, AbortRequest(stream.rid), stream.worker.identity)
            except zmq.ZMQError:  # the worker just went away; its requests are failing anyway
                pass

    def forget(self, stream: RequestStream) -> None:
        if self.streams.pop(stream.rid, None) is not None:
            stream.worker.num_in_flight -= 1

    # --- receiving -------------------------------------------------------------------------------
    async def _receive(self) -> None:
        while True:
            try:
                identity, message = await self.inbox.recv_async()
            except msgspec.MsgspecError as exc:
                logger.warning("dropped a malformed message: %s", exc)
                continue
            worker_id = ipc.client_id_of(identity)
            if isinstance(message, WorkerReady):
                self._admit(identity, message)
                continue
            worker = self.workers.get(worker_id)
            if worker is None or worker.identity != identity:
                continue  # not registered (or already declared dead, or replaced)
            worker.last_seen_s = time.monotonic()
            if isinstance(message, WorkerHeartbeat):
                worker.cpu_seconds = message.cpu_seconds
                worker.sees_engine = message.engine is not None
                self._note_engine(message.engine, message.engine_age_s)
            elif isinstance(message, TextDeltas):
                self._route(message)
            elif isinstance(message, TokenizeResult):
                future, _ = self.pending_tokenize.get(message.rid, (None, None))
                if future is not None and not future.done():
                    future.set_result(message)

    def _admit(self, identity: bytes, ready: WorkerReady) -> None:
        """A worker process is ready. The engine gives a worker id to a new process only once the
        old one's connection is gone: a new identity under a known id is a restarted worker."""
        worker_id = ipc.client_id_of(identity)
        earlier = self.workers.get(worker_id)
        if earlier is not None and earlier.identity == identity:
            return
        self.workers[worker_id] = Worker(worker_id, identity, ready.model, ready.max_model_len, time.monotonic(),
                                         tool_call_format=ready.tool_call_format)
        logger.info("tokenizer worker %d ready", worker_id)
        if earlier is not None:
            self._lose_worker(earlier, "was restarted")

    def _note_engine(self, stats: EngineStats | None, age_s: float) -> None:
        """Keep the freshest stats any worker relays (by when the engine sent them)."""
        sent_s = time.monotonic() - age_s
        if stats is not None and sent_s >= self.engine_stats_s:
            self.engine_stats, self.engine_stats_s = stats, sent_s

    def _route(self, deltas: TextDeltas) -> None:
        for i, rid in enumerate(deltas.rids):
            stream = self.streams.get(rid)
            if stream is None:
                continue
            stream.latest = StreamEvent(
                deltas.texts[i], FinishReason(deltas.finish[i]), deltas.num_prompt_tokens[i],
                deltas.num_output_tokens[i], deltas.num_cached_tokens[i], deltas.errors[i],
                deltas.error_codes[i], _with_prompt(deltas.prompt_logprobs[i], deltas.logprobs[i]))
            stream.output_ids += deltas.new_ids[i]
            stream.num_chars += len(deltas.texts[i])
            stream.queue.put_nowait(stream.latest)

    def _enforce_deadlines(self, now: float) -> None:
        """End each stream past a deadline (see RequestStream.deadline_event); the engine frees it."""
        for stream in list(self.streams.values()):
            event = stream.deadline_event(now)
            if event is not None:
                stream.expired = True
                self.abort(stream)
                stream.queue.put_nowait(event)

    def _lose_worker(self, worker: Worker, why: str) -> None:
        """`worker` is gone: its requests wait to be replayed by another (_replay_orphans), its
        tokenize calls fail."""
        orphans = [s for s in self.streams.values() if s.worker is worker and not (s.finished or s.expired)]
        logger.warning("tokenizer worker %d %s; %d requests move to another", worker.worker_id, why, len(orphans))
        self.dead_worker_cpu_seconds += worker.cpu_seconds
        for stream in orphans:
            stream.orphaned_s = time.monotonic()
        for future, asked in self.pending_tokenize.values():
            if asked is worker and not future.done():
                future.set_exception(Unavailable("the tokenizer worker serving this request died"))

    def _replay_orphans(self, now: float) -> None:
        """Resubmit each orphaned request to the least-loaded worker that hears the engine, as a
        continuation of what it streamed; past ORPHAN_WAIT_S with none, end it with an error."""
        live = [w for w in self.workers.values() if w.sees_engine]
        for stream in [s for s in self.streams.values() if s.orphaned_s is not None]:
            if stream.finished or stream.expired:
                stream.orphaned_s = None
            elif live and stream.request.attempt + 1 < MAX_ATTEMPTS:
                stream.request = msgspec.structs.replace(stream.request, attempt=stream.request.attempt + 1,
                                                         resume_ids=list(stream.output_ids),
                                                         resume_chars=stream.num_chars)
                stream.orphaned_s = None
                self._send_to(self._least_loaded(live), stream)
            elif now - stream.orphaned_s > ORPHAN_WAIT_S:
                stream.orphaned_s = None
                stream.queue.put_nowait(StreamEvent("", FinishReason.ERROR, 0, 0, 0, "the tokenizer worker serving "
                                                    "this request died and no other took it over", 503, []))

    def fail_all(self, reason: str, code: int) -> None:
        """End every stream in flight with an error (the server is going down); the engine frees them."""
        for stream in self.streams.values():
            if not (stream.finished or stream.expired):
                stream.expired = True
                self.abort(stream)
                stream.queue.put_nowait(StreamEvent("", FinishReason.ERROR, 0, 0, 0, reason, code, []))

    async def _watch_workers(self) -> None:
        """Drop silent workers (failing their requests) and forget a silent engine."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            self._enforce_deadlines(now)
            for worker in [w for w in self.workers.values() if now - w.last_seen_s > WORKER_SILENCE_S]:
                del self.workers[worker.worker_id]
                self._lose_worker(worker, "stopped responding")
            self._replay_orphans(now)
            if self.engine_stats is not None and now - self.engine_stats_s > WORKER_SILENCE_S:
                self.engine_stats = None


def _with_prompt(prompt_logprobs: list[TextLogprob], logprobs: list[TextLogprob]) -> list[TextLogprob]:
    """A step's logprobs, after the prompt's (which come with the first token, if asked for)."""
    return prompt_logprobs + logprobs if prompt_logprobs else logprobs
