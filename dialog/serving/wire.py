"""Registering repliq.v1.Chat with request parsing that cannot fail into INTERNAL.

The generated ``add_ChatServicer_to_server`` parses requests before any servicer code runs; bytes that
are not a valid message (a string field with bad UTF-8 from a non-Python client, garbage) then end as
``INTERNAL: Exception deserializing request!``, a code that tells the caller nothing and is not in the
contract. Here such a request reaches the method as :class:`Undecodable` and is refused with
``INVALID_ARGUMENT`` naming the message type and the parser's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from repliq.v1 import chat_pb2

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["Chat"]


@dataclass(frozen=True)
class Undecodable:
    message_type: str
    reason: str


def _lenient(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_class.DESCRIPTOR.full_name, str(exc))

    return parse


def _refusing(method: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request is not a valid {request.message_type} ({request.reason}); string fields "
                          "must be valid UTF-8: check the client's encoding")
        return method(request, context)

    return handle


def add_chat_service(servicer: Any, server: grpc.Server) -> None:
    """Like the generated ``add_ChatServicer_to_server``, for every method of the service descriptor."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _refusing(getattr(servicer, method.name)),
            request_deserializer=_lenient(getattr(chat_pb2, method.input_type.name)),
            response_serializer=getattr(chat_pb2, method.output_type.name).SerializeToString,
        )
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
