"""A tokenizer worker process: text in, tokens to the engine; tokens back, text to the frontend.

It connects to both binders (frontend ROUTER, engine PULL and ROUTER), so more workers can be
attached at any time from any host. It is sticky: the worker that tokenized a request also
detokenizes it, so detokenizer and stop-string state live in exactly one place.
"""

from __future__ import annotations

import gc
import logging
import resource
import time

import msgspec
import zmq

from frontend.in_flight import InFlight, split_engine_rid
from frontend.prompt_encoder import PromptEncoder
from frontend.text_deltas import add_entry, row_logprobs
from shared import ipc
from shared.config import engine_addresses
from shared.messages import (
    AbortRequest,
    EngineReady,
    EngineStats,
    FromEngine,
    GenerateRequest,
    Hello,
    Refused,
    Shutdown,
    TextDeltas,
    TokenDeltas,
    TokenizeRequest,
    ToWorker,
    WorkerHeartbeat,
    WorkerReady,
)
from shared.sampling import FinishReason
from shared.text.text_stream import TextStream
from shared.text.tokenizer import Tokenizer

HEARTBEAT_S = 1.0
ENGINE_SILENCE_S = 3.0  # no stats for this long: the engine is lost; requests wait for the next one
REGISTER_WARN_S = 10.0  # say why we wait every this often while the engine does not answer
ENGINE_WAIT_S = 120.0  # lost for this long: the requests waiting for it end with an error
logger = logging.getLogger("forge.worker")


class WorkerRefused(ValueError):
    """The engine will not serve this worker (its id is taken by a live one): one line, exit 2."""


class TokenizerWorker:
    def __init__(self, worker_id: int, frontend_address: str, engine_address: str,
                 curve_dir: str | None = None) -> None:
        self.worker_id = worker_id
        self.curve_dir = curve_dir  # None: plain sockets
        self.tokenizer: Tokenizer | None = None  # arrives with EngineReady
        self.prompts: PromptEncoder | None = None  # and so does this
        router_address, pull_address = engine_addresses(engine_address)
        self.addresses = (frontend_address, pull_address, router_address)
        self.active: dict[int, InFlight] = {}
        self.engine_ready: EngineReady | None = None
        self.engine_stats: EngineStats | None = None
        self.last_engine_s = time.monotonic()
        self.engine_lost_s: float | None = None  # since when the engine is silent (None: it is not)
        self.last_hello_s = 0.0
        self.stats_changed = False
        self.stopping = False

    def run(self) -> None:
        context = zmq.Context()
        identity = ipc.new_identity(self.worker_id)
        frontend_address, pull_address, router_address = self.addresses
        curve = self.curve_dir
        self.frontend = ipc.Inbox(ipc.make_socket(context, zmq.DEALER, frontend_address, False, identity, curve),
                                  ToWorker)
        self.to_engine = ipc.make_socket(context, zmq.PUSH, pull_address, False, None, curve)
        self.engine = ipc.Inbox(ipc.make_socket(context, zmq.DEALER, router_address, False, identity, curve),
                                FromEngine)
        try:
            self._register()
            self._serve()
        finally:
            context.destroy(linger=0)

    def _register(self) -> None:
        """Hello to the engine until it answers, then WorkerReady to the frontend."""
        started = warn_at = time.monotonic()
        while self.engine_ready is None:
            if time.monotonic() - warn_at >= REGISTER_WARN_S:  # a CURVE handshake fails silently here
                warn_at = time.monotonic()
                logger.warning("no answer from the engine at %s after %.0f s: is it running, do the CURVE keys "
                               "match?", self.addresses[2], warn_at - started)
            ipc.send(self.engine.socket, Hello(self.worker_id, "worker"))
            if self.engine.socket.poll(1000):
                _, message = self.engine.recv()
                if isinstance(message, Refused):
                    raise WorkerRefused(f"the engine refused this worker: {message.reason}")
                if isinstance(message, EngineReady):
                    self.engine_ready = message
                    self.tokenizer = Tokenizer.from_json(message.tokenizer_json, message.chat_template,
                                                         message.bos_token, message.eos_token)
                    self.prompts = PromptEncoder(self.tokenizer, message.max_model_len)
        self.last_engine_s = time.monotonic()
        gc.collect()
        gc.freeze()  # the tokenizer lives as long as we do: full collections need not scan it
        ready = self.engine_ready
        ipc.send(self.frontend.socket, WorkerReady(self.worker_id, ready.model, ready.max_model_len,
                                                   ready.tool_call_format))

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend.socket, zmq.POLLIN)
        poller.register(self.engine.socket, zmq.POLLIN)
        last_beat = 0.0
        while not self.stopping:
            ready = dict(poller.poll(int(HEARTBEAT_S * 1000)))
            if self.engine.socket in ready:
                self._drain(self.engine, self._from_engine)
            if self.frontend.socket in ready:
                self._drain(self.frontend, self._from_frontend)
            now = time.monotonic()
            self._watch_engine(now)
            if now - last_beat >= HEARTBEAT_S or self.stats_changed:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                engine = self.engine_stats if self.engine_lost_s is None else None
                ipc.send(self.frontend.socket, WorkerHeartbeat(self.worker_id, len(self.active),
                                                               usage.ru_utime + usage.ru_stime, engine,
                                                               now - self.last_engine_s))
                last_beat, self.stats_changed = now, False

    def _watch_engine(self, now: float) -> None:
        """Declare the engine lost after ENGINE_SILENCE_S of silence. While it is, say Hello each
        second (a restarted engine answers with EngineReady, and the requests are replayed to it:
        _engine_back) and, past ENGINE_WAIT_S, end the requests that wait for it."""
        if self.engine_lost_s is None:
            if now - self.last_engine_s > ENGINE_SILENCE_S:
                self.engine_lost_s, self.stats_changed = now, True  # the frontend learns it at once
                logger.warning("the engine stopped responding; %d requests wait for it", len(self.active))
            return
        if now - self.last_hello_s >= HEARTBEAT_S:
            ipc.send(self.engine.socket, Hello(self.worker_id, "worker"))
            self.last_hello_s = now
        if self.active and now - self.engine_lost_s > ENGINE_WAIT_S:
            self._fail_all(f"the engine did not come back within {ENGINE_WAIT_S:.0f} s", 503)

    def _engine_back(self, ready: EngineReady) -> None:
        """The engine answers (the same one after a stall, or a new one): send it every in-flight
        request it does not have, as a continuation of the tokens already streamed."""
        if self.engine_lost_s is not None:
            logger.warning("the engine is back after %.1f s", time.monotonic() - self.engine_lost_s)
        self.engine_lost_s, self.engine_ready = None, ready
        missing = [state for state in self.active.values() if state.engine_instance != ready.instance]
        for state in missing:
            ipc.send(self.to_engine, state.engine_request(self.worker_id, ready.instance))
        if missing:
            logger.warning("replayed %d requests to the engine", len(missing))

    @staticmethod
    def _drain(inbox: ipc.Inbox, handle) -> None:
        while True:
            try:
                _, message = inbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except msgspec.MsgspecError as exc:
                logger.warning("dropped a malformed message: %s", exc)
                continue
            try:
                handle(message)
            except WorkerRefused:
                raise
            except Exception as exc:  # noqa: BLE001 (a well-formed message it cannot act on must not end every request here)
                logger.warning("dropped a %s it could not act on: %s: %s", type(message).__name__,
                               type(exc).__name__, exc)

    # --- frontend -> worker ----------------------------------------------------------------------
    def _from_frontend(self, message: object) -> None:
        if isinstance(message, GenerateRequest):
            self._start(message)
        elif isinstance(message, AbortRequest):
            state = self.active.pop(message.rid, None)
            if state is not None:
                ipc.send(self.to_engine, AbortRequest(state.engine_rid))
        elif isinstance(message, TokenizeRequest):
            ipc.send(self.frontend.socket, self.prompts.tokenize_only(message))
        elif isinstance(message, Shutdown):
            self.stopping = True

    def _start(self, request: GenerateRequest) -> None:
        try:
            prompt_ids, prompt_text = self.prompts.encode(request)
            params = self.prompts.fitted_params(request, prompt_ids)
        except ValueError as exc:
            out = TextDeltas()
            add_entry(out, request.rid, "", FinishReason.ERROR, error=str(exc), error_code=400)
            self._send_text(out)
            return
        state = InFlight(request.rid, prompt_ids, params.seeded(), TextStream(self.tokenizer, request.stop),
                         prompt_text if request.echo else "", wants_logprobs=params.logprobs is not None,
                         attempt=request.attempt, score_only=request.score_only,
                         prompt_scored=bool(request.resume_ids))  # they went out with the first token
        if request.resume_ids or request.resume_chars:
            text = state.resume(request.resume_ids, request.resume_chars)
            finish = FinishReason.STOP if state.text.stopped else (
                FinishReason.LENGTH if state.num_output_tokens >= params.max_tokens else FinishReason.NONE)
            if text or finish:  # what the dead worker had not sent yet, or the end it had not told
                out = TextDeltas()
                add_entry(out, request.rid, text + (state.text.finish() if finish else ""), finish,
                          num_prompt_tokens=len(prompt_ids), num_output_tokens=state.num_output_tokens)
                self._send_text(out)
            if finish:
                return
        self.active[request.rid] = state
        if self.engine_lost_s is None:  # else it goes with the replays once an engine is back
            ipc.send(self.to_engine, state.engine_request(self.worker_id, self.engine_ready.instance))

    # --- engine -> worker -------------------------------------------------------------------------
    def _from_engine(self, message: object) -> None:
        if isinstance(message, Refused):  # a new engine gave our id to a live twin: it serves, we go
            raise WorkerRefused(f"the engine refused this worker: {message.reason}")
        self.last_engine_s = time.monotonic()
        if isinstance(message, EngineReady):
            self._engine_back(message)
        elif self.engine_lost_s is not None:  # the engine we knew, back after a stall
            self._engine_back(self.engine_ready)
        if isinstance(message, EngineStats):
            self.engine_stats, self.stats_changed = message, True  # relay at once
        elif isinstance(message, TokenDeltas):
            self._on_tokens(message)

    def _on_tokens(self, deltas: TokenDeltas) -> None:
        out = TextDeltas()
        for i, engine_rid in enumerate(deltas.rids):
            rid, attempt = split_engine_rid(engine_rid)
            state = self.active.get(rid)
            if state is None or state.attempt != attempt:  # aborted here, or taken over by a later attempt
                if not deltas.finish[i]:
                    ipc.send(self.to_engine, AbortRequest(engine_rid))  # nobody reads it: free its KV
                continue
            try:
                self._on_row(deltas, i, state, out)
            except (ValueError, TypeError, OverflowError, IndexError) as exc:  # one row's, not the others'
                self.active.pop(rid, None)
                ipc.send(self.to_engine, AbortRequest(engine_rid))
                add_entry(out, rid, "", FinishReason.ERROR, error=f"the engine sent what this worker cannot read: "
                          f"{type(exc).__name__}: {exc}", error_code=500)
        if out.rids:
            self._send_text(out)

    def _on_row(self, deltas: TokenDeltas, i: int, state: InFlight, out: TextDeltas) -> None:
        """Row i of `deltas`, for `state`: its text (and end) into `out`. Everything that can fail
        on a hostile row runs before anything is sent or forgotten."""
        text, finish, stopped = state.take(deltas.new_ids[i], FinishReason(deltas.finish[i]))
        error = deltas.errors[i]
        code = (deltas.error_codes[i] or 500) if error else 0  # 400: refused as asked; 500: the engine failed
        logprobs, prompt_logprobs = row_logprobs(self.tokenizer, state, deltas, i)
        if stopped:
            ipc.send(self.to_engine, AbortRequest(deltas.rids[i]))  # free its KV now; text is complete
        if finish:
            del self.active[state.rid]
        add_entry(out, state.rid, text, finish, deltas.num_prompt_tokens[i], state.num_output_tokens,
                  deltas.num_cached_tokens[i], error, code, logprobs, deltas.new_ids[i], prompt_logprobs)

    def _fail_all(self, reason: str, code: int) -> None:
        """End every active request with an error; tell the engine too, in case it is only slow, so
        it frees their KV instead of generating for nobody."""
        out = TextDeltas()
        for state in self.active.values():
            ipc.send(self.to_engine, AbortRequest(state.engine_rid))
            add_entry(out, state.rid, "", FinishReason.ERROR, error=reason, error_code=code)
        self.active.clear()
        self._send_text(out)

    def _send_text(self, deltas: TextDeltas) -> None:
        ipc.send(self.frontend.socket, deltas)

