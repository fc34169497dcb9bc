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


class RunningServer:
    """A started server and its health servicer, so callers can drain it cleanly."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer, port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port

    def stop(self, grace: float) -> None:
        """Refuse new calls, report NOT_SERVING, and wait up to ``grace`` seconds for calls in flight."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start_server(pipeline: Pipeline, config: ServerConfig, default_top_k: int,
                 loop: ServingLoop | None = None, home: Path | None = None,
                 admin: AdminService | None = None) -> RunningServer:
    """``home`` resolves relative TLS file paths of ``config``; ``admin`` adds repliq.v1.Admin (hot publish)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    threads = executor_threads(running_slots(config.max_workers), config.max_queue)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    add_chat_service(ChatService(pipeline, config, default_top_k, loop), server)  # bad bytes: INVALID_ARGUMENT
    if admin is not None:
        add_admin_service(admin, server)  # dialog/serving/admin.py: token-authenticated Publish
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (CHAT_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port, transport = add_port(server, config, home)  # TLS when [server] tls_cert/tls_key are set
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}; is another server running there?")
    # NOT_SERVING from the first moment the port answers (an unknown service would read NOT_FOUND), SERVING
    # only once everything is wired; the pipeline was built before this call. Drain: RunningServer.stop.
    for service in ("", CHAT_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    for service in ("", CHAT_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log_event(log, "serving", host=config.host, port=port, workers=running_slots(config.max_workers),
              queue=config.max_queue,
              threads=threads, transport=transport)
    return RunningServer(server, health_servicer, port)


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
