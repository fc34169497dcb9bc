"""The gRPC server: repliq.v1.Chat plus the standard Health and Reflection services.

Every request is validated before work starts, runs under the client's deadline (or the configured
default), is logged as one JSON line with its request id, and survives SIGTERM: the server stops
taking new calls and drains the ones in flight.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core import __version__
from core.config import ServerConfig
from dialog.serving.admin import AdminService, add_admin_service
from dialog.serving.admission import Admission, executor_threads, guarded, running_slots
from dialog.serving.feedback import ServingLoop, feedback_rpc
from dialog.serving.logs import log_event
from dialog.serving.pipeline import Pipeline, PipelineRequest
from dialog.serving.tls import add_port
from dialog.serving.validation import InvalidRequest, validate_request
from dialog.serving.wire import add_chat_service
from repliq.v1 import chat_pb2, chat_pb2_grpc

CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name
log = logging.getLogger("repliq.server")


class ChatService(chat_pb2_grpc.ChatServicer):
    def __init__(self, pipeline: Pipeline, limits: ServerConfig, default_top_k: int,
                 loop: ServingLoop | None = None) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self.default_top_k = default_top_k
        # At most max_workers requests run the pipeline and max_queue wait; more are refused at once.
        self.admission = Admission(running_slots(limits.max_workers), limits.max_queue, limits.max_queue_wait_ms / 1000)
        # Decision logging, exploration and Feedback (dialog.serving.feedback); None when not configured.
        self.loop = loop
        if loop is not None:
            pipeline.explorer = loop.explorer

    @guarded("Respond")
    def Respond(
        self, request: chat_pb2.RespondRequest, context: grpc.ServicerContext
    ) -> chat_pb2.RespondResponse:
        started = time.monotonic()
        metadata = dict(context.invocation_metadata())
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        context.send_initial_metadata((("x-request-id", request_id),))
        fields = {"request_id": request_id, "session_id": request.session_id, "rpc": "Respond"}
        try:
            dialogue = validate_request(request, self.limits)
        except InvalidRequest as exc:
            log_event(log, "rejected", logging.WARNING, **fields, code="INVALID_ARGUMENT", error=exc.loggable)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        remaining = context.time_remaining()
        budget = self.limits.default_timeout_s if remaining is None else min(remaining, 3600.0)
        if budget <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before work started")
        result = self.pipeline.respond(
            PipelineRequest(
                context=dialogue,
                top_k=request.top_k or self.default_top_k,
                deadline=started + budget,
                language_hint=request.language,
                explain=request.explain,
                generate=request.generate if request.HasField("generate") else None,
            )
        )
        if not context.is_active():
            log_event(log, "abandoned", logging.WARNING, **fields, code="CANCELLED")
            return chat_pb2.RespondResponse()
        reply = chat_pb2.RespondResponse(
            language=result.language,
            request_id=request_id,
            versions=chat_pb2.Versions(server=__version__, **{
                key: value for key, value in result.versions.items()
                if key in ("encoder", "bank", "index", "ranker", "generator", "adapter")
            }),
        )
        for candidate in result.candidates:
            reply.candidates.add(
                text=candidate.text,
                phrase_id=candidate.phrase_id or 0,
                source=candidate.source,
                score=candidate.score,
                language=candidate.language,
                stage_scores=candidate.stage_scores,
                contributions=[
                    chat_pb2.FeatureContribution(
                        feature=name, value=candidate.features.get(name, float("nan")), contribution=value
                    )
                    for name, value in candidate.contributions.items()
                ],
            )
        if self.loop is not None:
            self.loop.record(request_id, request.session_id, dialogue, result.language, result.decision,
                             {"server": __version__, **result.versions})
        log_event(
            log, "ok", **fields, code="OK", language=result.language, candidates=len(result.candidates),
            latency_ms=round((time.monotonic() - started) * 1000, 2),
        )
        return reply

    def Feedback(self, request: chat_pb2.FeedbackRequest, context: grpc.ServicerContext) -> chat_pb2.FeedbackResponse:
        return feedback_rpc(self.loop, request, context)


class _Loading:
    """Stands in for a servicer while the models load: every call is UNAVAILABLE (retryable), never a hang."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        self.target: object | None = None
        self.attached = False
        for name in methods:
            setattr(self, name, self._forward(name))

    def _forward(self, name: str):
        def call(request: object, context: grpc.ServicerContext) -> object:
            target = self.target
            if target is None and self.attached:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "this service is not enabled on this server")
            if target is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is still loading its models; health says "
                              "NOT_SERVING until it can answer; retry shortly")
            return getattr(target, name)(request, context)

        return call


class RunningServer:
    """A bound server and its health servicer: NOT_SERVING until ``attach`` wires the pipeline, and on drain."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer, port: int,
                 chat: _Loading, admin: _Loading, config: ServerConfig) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port
        self._chat, self._admin, self._config = chat, admin, config

    def attach(self, pipeline: Pipeline, default_top_k: int, loop: ServingLoop | None = None,
               admin: AdminService | None = None) -> None:
        """Start answering with ``pipeline`` (and ``admin`` for Publish, when given), then report SERVING."""
        self._admin.target, self._admin.attached = admin, True
        self._chat.target = ChatService(pipeline, self._config, default_top_k, loop)
        self._chat.attached = True
        for service in ("", CHAT_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log_event(log, "serving", host=self._config.host, port=self.port,
                  workers=running_slots(self._config.max_workers), queue=self._config.max_queue)

    def stop(self, grace: float) -> None:
        """Refuse new calls, report NOT_SERVING, and wait up to ``grace`` seconds for calls in flight."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def bind_server(config: ServerConfig, home: Path | None = None) -> RunningServer:
    """Listen before the models load, so a load balancer's health check reads NOT_SERVING, not a refused port.

    ``home`` resolves relative TLS file paths of ``config``. Chat and Admin answer UNAVAILABLE until
    ``RunningServer.attach``; drain is ``RunningServer.stop``.
    """
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    threads = executor_threads(running_slots(config.max_workers), config.max_queue)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    chat = _Loading(tuple(m.name for m in chat_pb2.DESCRIPTOR.services_by_name["Chat"].methods))
    add_chat_service(chat, server)  # bad bytes: INVALID_ARGUMENT
    admin = _Loading(("Publish",))
    add_admin_service(admin, server)  # dialog/serving/admin.py: token-authenticated Publish (UNAVAILABLE if off)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (CHAT_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port, transport = add_port(server, config, home)  # TLS when [server] tls_cert/tls_key are set
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}; is another server running there?")
    # NOT_SERVING from the first moment the port answers (an unknown service would read NOT_FOUND).
    for service in ("", CHAT_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    log_event(log, "listening", host=config.host, port=port, threads=threads, transport=transport)
    return RunningServer(server, health_servicer, port, chat, admin, config)


def start_server(pipeline: Pipeline, config: ServerConfig, default_top_k: int,
                 loop: ServingLoop | None = None, home: Path | None = None,
                 admin: AdminService | None = None) -> RunningServer:
    """Bind and attach at once, for a pipeline that is already built (tests, benchmarks, embedding)."""
    running = bind_server(config, home)
    running.attach(pipeline, default_top_k, loop, admin)
    return running


def serve_forever(running: RunningServer, grace: float) -> None:
    """Block until SIGTERM or SIGINT, then drain requests in flight before returning."""
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log_event(log, "draining", signal=signal.Signals(signum).name, grace_s=grace)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop_requested.wait()
    running.stop(grace)
    log_event(log, "stopped")
