"""The Hugging Face token from an AzureML workspace's Key Vault, read by the real Azure SDK.

Nothing of the SDK is replaced. Loopback servers stand in for Azure:

- the AzureML managed-identity endpoint (``MSI_ENDPOINT`` + ``MSI_SECRET``, plain HTTP, as on
  AzureML compute): ``ManagedIdentityCredential`` gets its token there;
- Key Vault, over HTTPS with a certificate for ``slm-test.vault.azure.net`` from a CA made
  here (``REQUESTS_CA_BUNDLE``), with Key Vault's challenge handshake: an unauthenticated
  first request, 401 + ``WWW-Authenticate: Bearer authorization=..., resource=...``, then the
  request with the bearer token;
- an HTTPS proxy (``HTTPS_PROXY``) that tunnels the vault's real-looking host name to that
  server, so the client keeps its default check that the challenge's resource
  (vault.azure.net) matches the vault's host.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from helpers import ROOT
from recorders import make_tls

from core.errors import UserError
from runtime import secrets

VAULT_HOST = "slm-test.vault.azure.net"
VAULT_URL = f"https://{VAULT_HOST}"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
HF_VALUE = "hf_LOOPBACK_fake_token_5d2e9b7c"
MI_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.fake-managed-identity-token"
MSI_SECRET = "msi-secret-for-the-test"


# ------------------------------------------------------------------------------------------
# The loopback Azure


class FakeAzure:
    """Records every request; ``vault_mode`` / ``msi_mode`` pick how the servers answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.connects: list[str] = []
        self.vault_mode = "ok"  # ok | forbidden | missing
        self.msi_mode = "ok"  # ok | no-identity
        self.lock = threading.Lock()

    def record(self, **kw):
        with self.lock:
            self.requests.append(kw)

    def vault_gets(self) -> list[dict]:
        return [r for r in self.requests if r["server"] == "vault"]

    def msi_gets(self) -> list[dict]:
        return [r for r in self.requests if r["server"] == "msi"]


def _handler(fake: FakeAzure, server: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: dict, headers: dict | None = None):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            fake.record(
                server=server,
                method="GET",
                path=url.path,
                query=query,
                host=self.headers.get("Host"),
                authorization=self.headers.get("Authorization"),
                secret=self.headers.get("secret"),
            )
            if server == "msi":
                return self._msi(query)
            return self._vault(url.path)

        def _msi(self, query):
            # AzureML's identity endpoint (api-version 2017-09-01): the `secret` header must match.
            if self.headers.get("secret") != MSI_SECRET:
                return self._send(401, {"error": "unauthorized"})
            if fake.msi_mode == "no-identity":
                return self._send(
                    400,
                    {
                        "error": "invalid_request",
                        "error_description": "No managed identity is assigned to this compute",
                    },
                )
            return self._send(
                200,
                {
                    "access_token": MI_TOKEN,
                    "expires_on": str(int(time.time()) + 3600),
                    "resource": query.get("resource"),
                    "token_type": "Bearer",
                },
            )

        def _vault(self, path):
            auth = self.headers.get("Authorization")
            if not auth:  # Key Vault's challenge: say which tenant and resource to get a token for
                challenge = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
                return self._send(
                    401,
                    {
                        "error": {
                            "code": "Unauthorized",
                            "message": "AKV10000: Request is missing a Bearer or PoP token.",
                        }
                    },
                    {"WWW-Authenticate": challenge},
                )
            if auth != f"Bearer {MI_TOKEN}":
                return self._send(401, {"error": {"code": "Unauthorized", "message": "AKV10032: Invalid issuer."}})
            if fake.vault_mode == "forbidden":
                return self._send(
                    403,
                    {
                        "error": {
                            "code": "Forbidden",
                            "message": (
                                "Caller is not authorized to perform action on resource. Action: "
                                "'Microsoft.KeyVault/vaults/secrets/getSecret/action'"
                            ),
                            "innererror": {"code": "ForbiddenByRbac"},
                        }
                    },
                )
            name = path.split("/")[2] if path.startswith("/secrets/") else None
            if fake.vault_mode == "missing" or name != "hf-token":
                return self._send(
                    404,
                    {
                        "error": {
                            "code": "SecretNotFound",
                            "message": (f"A secret with (name/id) {name} was not found in this key vault."),
                        }
                    },
                )
            return self._send(
                200,
                {
                    "value": HF_VALUE,
                    "id": f"{VAULT_URL}/secrets/hf-token/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    "attributes": {
                        "enabled": True,
                        "created": 1760000000,
                        "updated": 1760000000,
                        "recoveryLevel": "Recoverable+Purgeable",
                    },
                    "tags": {},
                },
            )

    return Handler


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _Proxy(socketserver.ThreadingTCPServer):
    """An HTTPS proxy: CONNECT to any host goes to the local vault server."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeAzure, target: tuple[str, int]):
        self.fake, self.target = fake, target
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        method, target = line.split()[:2]
        with self.server.fake.lock:
            self.server.fake.connects.append(f"{method} {target}")
        if method != "CONNECT":
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = socket.create_connection(self.server.target)
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        done = threading.Event()

        def pipe(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=pipe, args=(upstream, self.request), daemon=True).start()
        pipe(self.request, upstream)
        done.wait(5)
        upstream.close()


@pytest.fixture
def azure(tmp_path, monkeypatch):
    """A loopback Azure, and this process's environment pointed at it, as an AzureML node has it."""
    ca, cert, key = make_tls(tmp_path, VAULT_HOST)
    fake = FakeAzure()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    vault = _Server(("127.0.0.1", 0), _handler(fake, "vault"))
    vault.socket = ctx.wrap_socket(vault.socket, server_side=True)
    msi = _Server(("127.0.0.1", 0), _handler(fake, "msi"))
    proxy = _Proxy(fake, vault.server_address)
    servers = (vault, msi, proxy)
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    env = {
        "HF_TOKEN_KEYVAULT_URL": VAULT_URL,
        "HF_TOKEN_KEYVAULT_SECRET": "hf-token",
        "MSI_ENDPOINT": f"http://127.0.0.1:{msi.server_address[1]}/msi/token",
        "MSI_SECRET": MSI_SECRET,
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}",
        "https_proxy": f"http://127.0.0.1:{proxy.server_address[1]}",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "REQUESTS_CA_BUNDLE": str(ca),
    }
    for k in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "AZURE_CLIENT_ID",
        "DEFAULT_IDENTITY_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "http_proxy",
        "HTTP_PROXY",
    ):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fake.env = env
    yield fake
    for s in servers:
        s.shutdown()
        s.server_close()


# ------------------------------------------------------------------------------------------
# The reader, in this process


def test_reads_the_secret_with_the_managed_identity(azure):
    assert secrets.hf_token_from_key_vault() is True
    assert os.environ["HF_TOKEN"] == HF_VALUE
    # The identity endpoint was asked for a Key Vault token, AzureML style.
    (msi,) = azure.msi_gets()
    assert msi["path"] == "/msi/token" and msi["secret"] == MSI_SECRET
    assert msi["query"]["resource"] == "https://vault.azure.net" and msi["query"]["api-version"] == "2017-09-01"
    # Key Vault: the challenge round trip, then the authenticated GET of the secret.
    first, second = azure.vault_gets()
    assert (
        first["path"].rstrip("/") == second["path"].rstrip("/") == "/secrets/hf-token"
    )  # GET /secrets/{name}/{version=""}
    assert first["authorization"] is None
    assert second["authorization"] == f"Bearer {MI_TOKEN}"
    assert second["host"] == VAULT_HOST and "api-version" in second["query"]
    assert azure.connects and all(c == f"CONNECT {VAULT_HOST}:443" for c in azure.connects)


def test_a_token_already_set_is_kept_and_nothing_is_asked(azure, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_set_by_the_user")
    assert secrets.hf_token_from_key_vault() is False
    assert os.environ["HF_TOKEN"] == "hf_set_by_the_user"
    assert azure.requests == [] and azure.connects == []


def test_without_a_vault_url_nothing_is_read(azure, monkeypatch):
    monkeypatch.delenv("HF_TOKEN_KEYVAULT_URL")
    assert secrets.hf_token_from_key_vault() is False
    assert "HF_TOKEN" not in os.environ and azure.requests == []


def test_a_user_assigned_identity_is_picked_by_client_id(azure, monkeypatch):
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "0b7f4a52-2f43-4f9b-9d43-1a5c1e0f7d11")
    assert secrets.hf_token_from_key_vault() is True
    assert azure.msi_gets()[0]["query"]["clientid"] == "0b7f4a52-2f43-4f9b-9d43-1a5c1e0f7d11"


FAILURES = {
    "forbidden": ("vault_mode", "forbidden", "403 Forbidden"),
    "missing secret": (
        "vault_mode",
        "missing",
        "404, no such secret (az keyvault secret set --vault-name slm-test --name hf-token",
    ),
    "no identity": ("msi_mode", "no-identity", "no usable managed identity"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failures_are_one_line_naming_vault_and_secret(azure, case):
    attr, mode, words = FAILURES[case]
    setattr(azure, attr, mode)
    with pytest.raises(UserError) as err:
        secrets.hf_token_from_key_vault()
    message = str(err.value)
    assert "\n" not in message and words in message, message
    assert f"Key Vault {VAULT_URL}, secret 'hf-token'" in message
    assert HF_VALUE not in message and MI_TOKEN not in message
    assert "HF_TOKEN" not in os.environ
    assert err.value.exit_code == 2  # a configuration problem: a retry would fail the same way


def test_an_unreachable_vault_is_worth_a_retry(azure, monkeypatch):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    monkeypatch.setenv("HF_TOKEN_KEYVAULT_URL", f"https://127.0.0.1:{port}")
    with pytest.raises(UserError) as err:
        secrets.hf_token_from_key_vault()
    assert err.value.exit_code == 1 and "did not answer" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------
# A real stage, started as AzureML starts it


def _data_prep(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    full.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "stages.data_prep", "--dataset", str(tmp_path / "ds"), "--data.max_rows", "40"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_stage_reads_the_token_at_start(azure, tmp_path):
    proc = _data_prep(tmp_path, azure.env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gets = azure.vault_gets()
    assert [g["authorization"] for g in gets] == [None, f"Bearer {MI_TOKEN}"]
    assert all(g["path"].rstrip("/") == "/secrets/hf-token" for g in gets)
    assert f"HF_TOKEN read from Key Vault {VAULT_URL}, secret 'hf-token'" in proc.stderr
    assert HF_VALUE not in proc.stdout + proc.stderr and MI_TOKEN not in proc.stdout + proc.stderr


def test_the_stage_fails_in_one_line_when_the_vault_refuses(azure, tmp_path):
    azure.vault_mode = "forbidden"
    proc = _data_prep(tmp_path, azure.env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"error: [data_prep] cannot read the Hugging Face token from Key Vault {VAULT_URL}, "
        "secret 'hf-token': 403 Forbidden"
    )
    assert MI_TOKEN not in proc.stderr and not (tmp_path / "ds").exists()
