"""The caller's side of ``repliq.v1.Admin``: the editor's publish button and tests send Publish through here."""

from __future__ import annotations

from pathlib import Path

import grpc

from dialog.serving.admin import TOKEN_FILE, read_token
from repliq.v1 import admin_pb2, admin_pb2_grpc


class PublishError(Exception):
    """The server refused or could not be reached; ``code`` is the gRPC status name, the message its details."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    def __init__(self, host: str, port: int, token: str, *, timeout_s: float = 120.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """``token`` is the server workspace's admin token; ``credentials`` (``dialog.serving.tls``) for TLS."""
        self.target = target = f"{host}:{port}"
        self.channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.token = token
        self.timeout_s = timeout_s

    @classmethod
    def for_workspace(cls, host: str, port: int, home: Path, **kwargs: object) -> AdminClient:
        return cls(host, port, read_token(Path(home) / TOKEN_FILE), **kwargs)  # type: ignore[arg-type]

    def publish(self, requested_by: str = "") -> admin_pb2.PublishResponse:
        """Raises :class:`PublishError` with the server's reason (UNAUTHENTICATED, FAILED_PRECONDITION, ...)."""
        try:
            return self.stub.Publish(admin_pb2.PublishRequest(requested_by=requested_by), timeout=self.timeout_s,
                                     metadata=(("authorization", f"Bearer {self.token}"),))
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            details = exc.details() or ""
            if code == "UNAVAILABLE":
                details = f"no repliq server answers at {self.target} ({details}); is `repliq serve` running?"
            raise PublishError(code, details) from exc

    def close(self) -> None:
        self.channel.close()
