"""daphne refuses a request body over HTTP_MAX_BODY_BYTES as it arrives: 413, then close.

Without the bound daphne buffers the whole body before the application can refuse
it (a 50 MB POST with a bad token added 49 MB to the process).
"""

import socket
from pathlib import Path

import pytest

pytestmark = [pytest.mark.daphne, pytest.mark.django_db(transaction=True)]

MB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post(port: int, head: bytes, body_chunks) -> bytes:
    """Send a request head and as much of the body as the server takes; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed: it stopped reading, as it should
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
    return answer


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(daphne_server):
    """Content-Length of 50 MB against a 1 MB limit: 413 at once, and the process stays small."""
    server = daphne_server(HTTP_MAX_BODY_BYTES=str(MB))
    before = rss_bytes(server.process.pid)
    head = (b"POST /api/notify/ann HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer not-a-token\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(50 * MB).encode() + b"\r\n\r\n")
    answer = post(server.port, head, (b"x" * MB for _ in range(50)))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"error": "too_large", "message": "request body too large"}')
    assert rss_bytes(server.process.pid) - before < 10 * MB


def test_a_chunked_body_is_refused_once_it_passes_the_limit(daphne_server):
    """Without a length the body is counted as it comes; past the limit: 413."""
    server = daphne_server(HTTP_MAX_BODY_BYTES=str(MB))
    head = (b"POST /api/notify/ann HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer not-a-token\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    answer = post(server.port, head, (chunk for _ in range(20)))
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_body_within_the_limit_reaches_the_application(daphne_server):
    """Under the limit nothing changes: the API answers (here 401 for the bad token)."""
    server = daphne_server(HTTP_MAX_BODY_BYTES=str(MB))
    body = b'{"text": "' + b"x" * 1000 + b'"}'
    head = (b"POST /api/notify/ann HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Bearer not-a-token\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    answer = post(server.port, head, [body])
    assert answer.startswith(b"HTTP/1.1 401 ")
