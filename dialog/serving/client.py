"""A small client over the generated stubs, used by `repliq ask`, `repliq chat`, the demo and tests."""

from __future__ import annotations

import time
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from repliq.v1 import chat_pb2, chat_pb2_grpc


class ChatClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 50051, timeout_s: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """``credentials`` (``dialog.serving.tls.channel_credentials``) for a TLS server; None is plaintext."""
        target = f"{host}:{port}"
        self.channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        self.stub = chat_pb2_grpc.ChatStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout_s = timeout_s

    def respond(
        self,
        turns: list[tuple[str, str]],
        *,
        top_k: int = 0,
        language: str = "",
        explain: bool = False,
        generate: bool | None = None,
        session_id: str = "",
        timeout_s: float | None = None,
    ) -> chat_pb2.RespondResponse:
        _check_unicode(turns, language, session_id)
        request = chat_pb2.RespondRequest(
            turns=[chat_pb2.Turn(speaker=speaker, text=text) for speaker, text in turns],
            top_k=top_k, language=language, explain=explain, session_id=session_id,
        )
        if generate is not None:
            request.generate = generate
        return self.stub.Respond(
            request,
            timeout=timeout_s or self.timeout_s,
            metadata=(("x-request-id", uuid.uuid4().hex),),
        )

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        """Poll Health until SERVING; raise with a hint when the server never comes up."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            try:
                status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
            except grpc.RpcError as exc:
                last_error = exc.details() or str(exc.code())
            time.sleep(0.2)
        raise TimeoutError(f"server did not report SERVING within {timeout_s:.0f}s ({last_error}); see its log")

    def close(self) -> None:
        self.channel.close()


def _check_unicode(turns: list[tuple[str, str]], language: str, session_id: str) -> None:
    """Protobuf strings are UTF-8, which cannot carry a lone surrogate (text decoded with
    ``surrogateescape``, or cut from a UTF-16 string); name the field instead of a bare codec error."""
    named = [("language", language), ("session_id", session_id)]
    for i, (speaker, text) in enumerate(turns):
        named += [(f"turns[{i}].speaker", speaker), (f"turns[{i}].text", text)]
    for name, value in named:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} holds a lone surrogate (U+{ord(value[exc.start]):04X}) at position {exc.start}, "
                             "which a protobuf string cannot carry; decode the text properly or drop that character"
                             ) from None
