"""TLS and mutual TLS on the gRPC port, with a CA, server and client certificates made in the test (openssl)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from core.config import ServerConfig
from core.types import Candidate, Context
from dialog.serving.client import ChatClient
from dialog.serving.pipeline import Pipeline
from dialog.serving.server import RunningServer, start_server
from dialog.serving.tls import channel_credentials

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _authority(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}", cwd=directory)


def _issue(directory: Path, ca: str, name: str, san: str) -> None:
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n", encoding="utf-8")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca signs the server and a client; other-ca signs an impostor client."""
    root = tmp_path_factory.mktemp("pki")
    _authority(root, "ca")
    _authority(root, "other-ca")
    _issue(root, "ca", "server", "IP:127.0.0.1,DNS:localhost")
    _issue(root, "ca", "client", "DNS:admin-client")
    _issue(root, "other-ca", "impostor", "DNS:impostor")
    return root


class Echo:
    name = "bank"

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [Candidate(text="secure hello", source="bank", language=language, phrase_id=1, score=1.0)]


def _serve(config: ServerConfig) -> RunningServer:
    return start_server(Pipeline([Echo()], pool_k=5), replace(config, port=0), default_top_k=1)


def _ask(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    client = ChatClient("127.0.0.1", port, timeout_s=5.0, credentials=credentials)
    try:
        return client.respond([("user", "hello")]).candidates[0].text
    finally:
        client.close()


def test_tls_port_answers_tls_clients_only(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pki)  # no home given: a relative path is taken as is
    running = _serve(ServerConfig(tls_cert=str(pki / "server.crt"), tls_key="server.key"))
    try:
        assert _ask(running.port, channel_credentials(pki / "ca.crt")) == "secure hello"
        with pytest.raises(grpc.RpcError) as plaintext:
            _ask(running.port, None)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as untrusted:  # a server certificate from a CA the client does not trust
            _ask(running.port, channel_credentials(pki / "other-ca.crt"))
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace=0.5)


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca(pki: Path) -> None:
    config = ServerConfig(tls_cert="server.crt", tls_key="server.key", tls_client_ca="ca.crt")
    running = start_server(Pipeline([Echo()], pool_k=5), replace(config, port=0), default_top_k=1, home=pki)
    try:
        assert _ask(running.port, channel_credentials(pki / "ca.crt", pki / "client.crt", pki / "client.key")) \
            == "secure hello"
        for credentials in (channel_credentials(pki / "ca.crt"),  # no client certificate
                            channel_credentials(pki / "ca.crt", pki / "impostor.crt", pki / "impostor.key"), None):
            with pytest.raises(grpc.RpcError) as refused:
                _ask(running.port, credentials)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace=0.5)


def test_half_configured_or_unreadable_tls_is_refused_at_start(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs both tls_cert and tls_key"):
        _serve(ServerConfig(tls_cert=str(pki / "server.crt")))
    with pytest.raises(ValueError, match="needs both"):
        _serve(ServerConfig(tls_client_ca=str(pki / "ca.crt")))
    with pytest.raises(ValueError, match=r"tls_key = .*cannot read .*missing.key"):
        _serve(ServerConfig(tls_cert=str(pki / "server.crt"), tls_key=str(tmp_path / "missing.key")))
    (tmp_path / "not.pem").write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tls_cert: .*not a PEM file"):
        _serve(ServerConfig(tls_cert=str(tmp_path / "not.pem"), tls_key=str(pki / "server.key")))
