"""A recording reverse proxy on loopback: every request an agent sends passes through
here on its way to the server, and its method, path, headers and body are kept, with the
server's answer (status and body)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def everything(self) -> bytes:
        """The request as sent: request line, headers and body."""
        head = f"{self.method} {self.path}\n" + "\n".join(
            f"{k}: {v}" for k, v in self.headers.items()
        )
        return head.encode("latin-1", "replace") + b"\n\n" + self.body


class RecordingProxy:
    """``with RecordingProxy(upstream_port) as proxy:`` point clients at ``proxy.url``."""

    def __init__(self, upstream_port: int) -> None:
        self.requests: list[Recorded] = []
        # (request, status, response body) for every answer the server gave
        self.responses: list[tuple[Recorded, int, bytes]] = []
        # A test may set ``refuse``: a request it returns True for is recorded, answered
        # 503 and never forwarded (a site cut off mid-protocol; agents retry a 503).
        self.refuse: Callable[[Recorded], bool] | None = None
        lock = threading.Lock()
        records = self.requests
        answers = self.responses
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = Recorded(self.command, self.path, dict(self.headers), body)
                with lock:
                    records.append(record)
                if proxy.refuse is not None and proxy.refuse(record):
                    self.send_error(503, "cut off by the test")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                try:
                    try:
                        upstream.request(self.command, self.path, body=body, headers=headers)
                        reply = upstream.getresponse()
                        data = reply.read()
                    except OSError:
                        self.send_error(502, "upstream unavailable")
                        return
                    with lock:
                        answers.append((record, reply.status, data))
                    self.send_response(reply.status, reply.reason)
                    for k, v in reply.getheaders():
                        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The agent was killed mid-request (the restart test does exactly
                    # that): nobody is left to answer.
                    self.close_connection = True
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
