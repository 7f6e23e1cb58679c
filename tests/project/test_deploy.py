"""deploy/: the nginx example passes ``nginx -t`` and proxies HTTP and WebSockets to daphne."""

import asyncio
import configparser
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.once

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.fixture
def nginx() -> str:
    if NGINX is None:
        pytest.skip("nginx is not installed (`python3 dev.py test` installs nginx-light "
                    "with apt when run as root)")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: no throwaway certificate for the nginx test")
    return NGINX


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"deploy/nginx.conf no longer contains {old!r}"
    return text.replace(old, new)


def local_config(tmp_path: Path, certificate: tuple[Path, Path], *, upstream_port: int = 8001,
                 http_port: int = 80, https_port: int = 443, foreground: bool = False) -> Path:
    """deploy/nginx.conf with test certificates, files under ``tmp_path`` and given ports."""
    cert, key = certificate
    text = (DEPLOY / "nginx.conf").read_text()
    text = replace(text, "/etc/ssl/certs/chat.example.com.pem", str(cert))
    text = replace(text, "/etc/ssl/private/chat.example.com.key", str(key))
    text = replace(text, "pid /run/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    text = replace(text, "/var/log/nginx/error.log", str(tmp_path / "error.log"))
    text = replace(text, "/var/log/nginx/realtime.access.log", str(tmp_path / "access.log"))
    if foreground:
        text = replace(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
        text = replace(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
        text = replace(text, "server 127.0.0.1:8001 ", f"server 127.0.0.1:{upstream_port} ")
        text = replace(text, "server 127.0.0.1:8002 ", f"server 127.0.0.1:{upstream_port} ")
        text = "daemon off;\n" + text
        if os.geteuid() != 0:
            text = replace(text, "user www-data;", "")
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_accepts_the_example_config(nginx, certificate, tmp_path):
    """`nginx -t` accepts deploy/nginx.conf once the certificate paths point at real files."""
    config = local_config(tmp_path, certificate)
    done = subprocess.run(
        [nginx, "-t", "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.fixture
def proxied(nginx, certificate, tmp_path, daphne_server):
    """nginx on free ports with the example config, in front of one real daphne."""
    server = daphne_server(PROXY_HEADERS="true")
    http_port, https_port = free_port(), free_port()
    config = local_config(tmp_path, certificate, upstream_port=server.port,
                          http_port=http_port, https_port=https_port, foreground=True)
    process = subprocess.Popen(
        [nginx, "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_listening(https_port, process)
        yield server, http_port, https_port, tmp_path / "access.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_nginx_proxies_http_and_websockets_to_daphne(proxied, make_user, token_for):
    """Through the example config: TLS, /healthz, WebSockets, /metrics hidden, no token logged."""
    server, http_port, https_port, access_log = proxied
    await database_sync_to_async(make_user)("alice")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    # A client's own X-Forwarded-For is replaced, so daphne logs the real address.
    status, body = await asyncio.to_thread(get, f"https://127.0.0.1:{https_port}/healthz",
                                           context, {"X-Forwarded-For": "198.51.100.7"})
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _ = await asyncio.to_thread(get, f"https://127.0.0.1:{https_port}/metrics", context)
    assert status == 404
    status, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{http_port}/healthz", None)
    assert status == 301

    base = f"wss://127.0.0.1:{https_port}"
    async with websockets.connect(f"{base}/ws/echo/", ssl=context) as ws:
        await ws.send("through nginx")
        assert await asyncio.wait_for(ws.recv(), 10) == "Echo: through nginx"
    token = token_for("alice")
    async with websockets.connect(f"{base}/ws/chat/deploy/?token={token}", ssl=context) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "history"
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "user_joined"
        await ws.send(json.dumps({"type": "message", "content": "via proxy"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["type"] == "message" and frame["content"] == "via proxy"
    await asyncio.sleep(0.2)  # nginx writes the log line when the socket closes
    logged = access_log.read_text()
    assert '"GET /ws/chat/deploy/ HTTP/1.1" 101' in logged
    assert token not in logged and "token=" not in logged
    assert "198.51.100.7" not in server.output()
    assert '127.0.0.1:' in server.output()


def test_systemd_template_runs_one_daphne_per_instance_port():
    """realtime@.service starts `manage.py serve` on the instance's port and restarts it."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "realtime@.service")
    service = unit["Service"]
    assert "manage.py serve" in service["ExecStart"] and "--port %i" in service["ExecStart"]
    assert service["Restart"] == "always"
    assert "PROXY_HEADERS=true" in service["Environment"]
    assert unit["Install"]["WantedBy"]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.stderr.read().decode()}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError("nginx did not listen in time")


def get(url: str, context: ssl.SSLContext | None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET without following redirects: (status, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}),
                         timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
