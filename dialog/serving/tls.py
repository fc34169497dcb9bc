"""TLS for the gRPC port: server certificate and key from ``[server]``, optionally mutual TLS.

Nothing here is on by default (loopback serving needs none); once ``tls_cert`` and ``tls_key`` are set
the port accepts TLS only, and with ``tls_client_ca`` every caller must present a certificate that CA
signed. A half-done setting is refused at start-up with the keys to fix, never served in plaintext.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import grpc

from core.config import ServerConfig
from dialog.serving.logs import log_event

log = logging.getLogger("repliq.server")


def _read_pem(value: str, key: str, home: Path | None) -> bytes:
    path = Path(value).expanduser()
    if not path.is_absolute() and home is not None:
        path = home / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"[server] {key} = {value!r}: cannot read {path} ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data:
        raise ValueError(f"[server] {key}: {path} is not a PEM file (no '-----BEGIN' line)")
    if key == "tls_key" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log_event(log, "private key readable by others", logging.WARNING, path=str(path),
                  fix=f"chmod 600 {path}")
    return data


def server_credentials(config: ServerConfig, home: Path | None = None) -> grpc.ServerCredentials | None:
    """None for a plaintext port; else TLS credentials (requiring client certificates with a client CA)."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("[server] TLS needs both tls_cert and tls_key (PEM files); set both, or neither "
                         "(and no tls_client_ca) for a plaintext port")
    pair = (_read_pem(config.tls_key, "tls_key", home), _read_pem(config.tls_cert, "tls_cert", home))
    client_ca = _read_pem(config.tls_client_ca, "tls_client_ca", home) if config.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def add_port(server: grpc.Server, config: ServerConfig, home: Path | None = None) -> tuple[int, str]:
    """Listen on host:port (TLS when configured); returns the bound port and "tls", "mtls" or "plaintext"."""
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config, home)
    if credentials is None:
        return server.add_insecure_port(address), "plaintext"
    return server.add_secure_port(address, credentials), "mtls" if config.tls_client_ca else "tls"


def channel_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Client side: trust ``ca``; present ``cert``/``key`` for mutual TLS."""
    chain = Path(cert).read_bytes() if cert else None
    private = Path(key).read_bytes() if key else None
    return grpc.ssl_channel_credentials(Path(ca).read_bytes(), private_key=private, certificate_chain=chain)
