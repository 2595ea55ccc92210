"""``tessera serve --tls-cert/--tls-key`` end to end (issue 13 §4): a self-signed certificate made here, a real
server, httpx and the websockets client verifying against that certificate; no ``Server`` banner; a missing,
unreadable or mismatched file refused in one line before anything starts."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from tests.servers import REPO, TESSERA, ServerProcess, free_port

pytestmark = pytest.mark.slow
TOKEN = "tsr_tls-root-token-0123456789abcdef"


def self_signed(directory: Path, name: str = "tessera-test") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key, as PEM files (the key 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    server = ServerProcess(base / "data", root_token=TOKEN, tls=self_signed(base)).start()
    yield server
    server.stop()


def test_https_end_to_end_verified_against_the_certificate(tls_server):
    assert tls_server.url.startswith("https://127.0.0.1:")
    with tls_server.client() as client:
        put = client.put("/config/tls.greeting", json={"value": "over TLS"})
        assert put.status_code == 201, put.text
        got = client.get("/config/tls.greeting")
        assert got.status_code == 200 and got.json()["value"] == "over TLS"
        assert got.extensions["http_version"] == b"HTTP/1.1"
        assert "server" not in got.headers, got.headers  # no banner
        assert "server" not in client.get("/health").headers
    assert "https://127.0.0.1" in tls_server.log()  # the start line names the scheme it serves


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_server.url + "/health", timeout=10)  # the system's trust store knows no such issuer
    other_cert, _ = self_signed(tls_server.data_dir.parent, name="someone-else")
    with pytest.raises(httpx.ConnectError):
        httpx.get(tls_server.url + "/health", timeout=10, verify=ssl.create_default_context(cafile=str(other_cert)))


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server):
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.url.replace("https://", "http://") + "/health", timeout=10)


def test_websocket_over_tls(tls_server):
    with tls_server.client() as client:
        since = client.get("/health").json()["revision"]
        context = ssl.create_default_context(cafile=str(tls_server.tls[0]))
        with connect(tls_server.url.replace("https://", "wss://") + "/ws", ssl=context) as ws:
            ws.send(json.dumps({"type": "auth", "token": TOKEN}))
            ws.send(json.dumps({"type": "subscribe", "keys": ["tlsws.*"], "since": since}))
            assert client.put("/config/tlsws.a", json={"value": 1}).status_code == 201
            event = json.loads(ws.recv(timeout=10))
    assert (event["type"], event["key"], event["value"]) == ("event", "tlsws.a", 1)


def test_a_plain_server_sends_no_banner_either(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=TOKEN).start()
    try:
        with server.client() as client:
            for response in (client.get("/health"), client.get("/config/none.here"), client.get("/nothing")):
                assert "server" not in response.headers, response.headers
    finally:
        server.stop()


def refusal(tmp_path: Path, *tls_args: str) -> str:
    """Run ``tessera serve`` with these TLS arguments; it must exit at once with one line on stderr."""
    result = subprocess.run(
        [*TESSERA, "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
         "--root-token", TOKEN, *tls_args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: tessera serve: refusing to start:"), lines
    assert "listening" not in result.stdout, result.stdout
    return lines[0]


def test_missing_unreadable_or_mismatched_tls_files_are_refused_in_one_line(tmp_path):
    cert, key = self_signed(tmp_path)
    other_cert, other_key = self_signed(tmp_path, name="other")
    assert "No such file" in refusal(tmp_path, "--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key))
    assert "--tls-key" in refusal(tmp_path, "--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.key"))
    assert "Is a directory" in refusal(tmp_path, "--tls-cert", str(tmp_path), "--tls-key", str(key))
    assert "do not load" in refusal(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert "do not load" in refusal(tmp_path, "--tls-cert", str(key), "--tls-key", str(key))
    assert "go together" in refusal(tmp_path, "--tls-cert", str(cert))
    assert other_cert.exists()
    if os.geteuid() != 0:  # root reads a 0000 file anyway
        os.chmod(key, 0o000)
        assert "Permission denied" in refusal(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
