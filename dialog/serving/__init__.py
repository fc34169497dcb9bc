"""Serving: the request pipeline, its assembly from settings, request validation, the gRPC server and client."""
