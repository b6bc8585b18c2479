"""The engine process: drain inbox -> step -> publish, the only ZeroMQ user on the engine side.

Workers PUSH requests and aborts to our PULL (one ordered pipe per worker, so an abort never
overtakes its add). Workers and the frontend register on our ROUTER with Hello; we answer
EngineReady, send each worker one TokenDeltas per step, and broadcast EngineStats (the heartbeat)
about once a second. Idle, we block in poll: no busy spinning.
"""

from __future__ import annotations

import gc
import logging
import resource
import time

import msgspec
import zmq

from engine import compute_thread
from engine.engine_core import EngineCore
from engine.process.step_heartbeat import StepHeartbeat
from engine.step_output import StepOutput
from shared import ipc
from shared.messages import (
    AbortRequest,
    EngineReady,
    EngineRequest,
    EngineStats,
    Hello,
    Refused,
    Shutdown,
    ToEnginePull,
    ToEngineRouter,
    TokenDeltas,
)
from shared.sampling import FinishReason

STATS_INTERVAL_S = 1.0  # heartbeat: stats go out at least this often
STATS_MIN_GAP_S = 0.1  # and on change, at most this often
logger = logging.getLogger("forge.engine")


class EngineLoop:
    def __init__(self, core: EngineCore, ready: EngineReady, pull_address: str, router_address: str,
                 curve_dir: str | None = None) -> None:
        self.core = core
        self.ready = ready
        self.pull_address, self.router_address = pull_address, router_address
        self.curve_dir = curve_dir  # None: plain sockets (local ipc://, or a trusted network)
        self.clients: dict[bytes, str] = {}  # identity -> role
        self.worker_identity: dict[int, bytes] = {}  # worker id -> the identity of the process holding it
        self.worker_of: dict[int, int] = {}  # rid -> worker id
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.stopping = False
        self.last_stats: EngineStats | None = None
        self.last_stats_s = 0.0
        self.step_started_s: float | None = None  # monotonic start of the step in progress
        self.dispatch = {EngineRequest: self._add, AbortRequest: self._abort, Shutdown: self._shutdown}

    def run(self) -> None:
        """Serve until Shutdown. All model work stays on the compute thread (one OpenMP team)."""
        _freeze_startup_objects()
        compute_thread.run(self._serve)

    def _serve(self) -> None:
        context = zmq.Context()
        authenticator = ipc.start_authenticator(context, self.curve_dir) if self.curve_dir else None
        self.pull = ipc.Inbox(ipc.make_socket(context, zmq.PULL, self.pull_address, True, None, self.curve_dir),
                              ToEnginePull)
        self.router = ipc.Inbox(ipc.make_socket(context, zmq.ROUTER, self.router_address, True, None,
                                                self.curve_dir), ToEngineRouter)
        poller = zmq.Poller()
        poller.register(self.pull.socket, zmq.POLLIN)
        poller.register(self.router.socket, zmq.POLLIN)
        heartbeat = StepHeartbeat(STATS_INTERVAL_S, self._beat_during_step)
        heartbeat.start()
        try:
            while not self.stopping:
                stats = self._stats()
                since = time.monotonic() - self.last_stats_s
                changed = _load(stats) != _load(self.last_stats)
                if since >= STATS_INTERVAL_S or (changed and since >= STATS_MIN_GAP_S):
                    self._broadcast(stats)
                    changed = False
                idle_wait_s = STATS_MIN_GAP_S if changed else STATS_INTERVAL_S
                poller.poll(0 if self.core.has_work() else int(idle_wait_s * 1000))
                self._drain()
                if self.core.has_work():
                    self.step_started_s = time.monotonic()
                    with heartbeat.stepping():
                        output = self.core.step()
                    self.step_started_s = None
                    self._publish(output)
        finally:
            heartbeat.stop()
            if authenticator is not None:
                authenticator.stop()
            context.destroy(linger=0)

    def _beat_during_step(self) -> None:
        """Heartbeat thread, socket lock held: fresh stats (with the step's running time, which
        tells a stalled step from a long one) once a step outlasts the interval."""
        if time.monotonic() - self.last_stats_s >= STATS_INTERVAL_S:
            self._broadcast(self._stats())

    def _drain(self) -> None:
        for inbox, handle in ((self.router, self._register), (self.pull, self._handle)):
            while True:
                try:
                    identity, message = inbox.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except msgspec.MsgspecError as exc:  # a malformed message: drop it, keep serving
                    logger.warning("dropped a malformed message: %s", exc)
                    continue
                handle(identity, message)

    def _register(self, identity: bytes, hello: Hello) -> None:
        if hello.role == "worker" and not self._claim_worker_id(identity):
            return
        self.clients[identity] = hello.role
        if self._send(identity, self.ready):
            self._send(identity, self._stats())  # the newcomer can report the engine alive at once

    def _claim_worker_id(self, identity: bytes) -> bool:
        """Give the worker id in `identity` to that process, unless a live process holds it (the
        holder is asked: a dead one's connection is gone, so a restarted worker takes its id over)."""
        worker_id = ipc.client_id_of(identity)
        holder = self.worker_identity.get(worker_id)
        if holder not in (None, identity) and self._send(holder, self._stats()):
            logger.warning("refused a worker: worker id %d is in use by a live worker", worker_id)
            self._send(identity, Refused(f"worker id {worker_id} is in use by another live worker; start this "
                                         "one with a different --worker-id"))
            return False
        self.worker_identity[worker_id] = identity
        return True

    def _handle(self, _: None, message: object) -> None:
        self.dispatch[type(message)](message)

    def _add(self, request: EngineRequest) -> None:
        if request.engine_instance != self.ready.instance:
            # Sent to the engine before this one (queued while it died): the worker replays it.
            logger.info("dropped request %d, addressed to an earlier engine", request.rid)
            return
        try:
            if request.rid in self.worker_of:
                raise ValueError(f"request id {request.rid} is already running")
            self.core.add_request(request.rid, request.prompt_ids, request.params, request.output_ids)
        except ValueError as exc:  # the worker validates first; this is the last line of defence
            self._send_to_worker(request.worker, TokenDeltas(
                rids=[request.rid], new_ids=[[]], finish=[FinishReason.ERROR], num_prompt_tokens=[len(request.prompt_ids)],
                num_cached_tokens=[0], errors=[str(exc)], logprobs=[[]], error_codes=[400], prompt_logprobs=[[]]))
            return
        self.worker_of[request.rid] = request.worker
        self.num_prompt_tokens += len(request.prompt_ids)

    def _abort(self, abort: AbortRequest) -> None:
        self.core.abort(abort.rid)

    def _shutdown(self, _: Shutdown) -> None:
        self.stopping = True

    def _publish(self, output: StepOutput) -> None:
        """One TokenDeltas per worker for this step."""
        self.num_generation_tokens += output.num_new_tokens
        for worker, message in output.deltas_by_worker(self.worker_of).items():
            self._send_to_worker(worker, message)
        for request in output.requests:
            if request.finish_reason:
                self.worker_of.pop(request.rid, None)

    def _send_to_worker(self, worker: int, message: TokenDeltas) -> None:
        identity = self.worker_identity.get(worker)
        if identity is None or not self._send(identity, message):
            # The worker is gone: nobody can receive these outputs, so free their KV blocks now.
            for rid in [rid for rid, w in self.worker_of.items() if w == worker]:
                self.core.abort(rid)

    def _send(self, identity: bytes, message: msgspec.Struct) -> bool:
        try:
            ipc.send(self.router.socket, message, identity)
            return True
        except zmq.ZMQError:  # EHOSTUNREACH: that peer disconnected
            self.clients.pop(identity, None)
            return False

    def _broadcast(self, stats: EngineStats) -> None:
        for identity in list(self.clients):
            self._send(identity, stats)
        self.last_stats, self.last_stats_s = stats, time.monotonic()

    def _stats(self) -> EngineStats:
        scheduler = self.core.scheduler
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = self.step_started_s
        drafter = scheduler.drafter
        speculation = {} if drafter is None else dict(
            spec_num_drafts=drafter.num_drafts, spec_num_draft_tokens=drafter.num_draft_tokens,
            spec_num_accepted_tokens=drafter.num_accepted_tokens,
            spec_accepted_per_position=list(drafter.accepted_per_position))
        return EngineStats(
            num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
            kv_usage=scheduler.block_manager.usage, num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens,
            num_prefix_cache_queries=scheduler.num_cache_queries, num_prefix_cache_hits=scheduler.num_cache_hits,
            num_preemptions=scheduler.num_preemptions, cpu_seconds=usage.ru_utime + usage.ru_stime,
            step_running_s=0.0 if started is None else time.monotonic() - started, **speculation)


def _freeze_startup_objects() -> None:
    """The model, tokenizer and start-up objects live as long as the process: take them out of the
    collector's sight, so full collections scan only what requests create (at 1,024 running
    requests this cut the engine's own time per step from 27 to 15 ms: benchmarks/engine_overhead.py)."""
    gc.collect()
    gc.freeze()


def _load(stats: EngineStats | None) -> tuple | None:
    """The part of the stats whose change is worth an immediate broadcast."""
    return None if stats is None else (stats.num_running, stats.num_waiting, stats.kv_usage)
