"""A loopback proxy that adds the real API key, so an agent CLI never holds it.

Tools a CLI runs inherit its environment (measured: Claude Code's Bash saw ANTHROPIC_API_KEY). So the
CLI gets a base URL pointing here and a random per-trial token instead of the key; this proxy, running
inside nightlab, checks the token, swaps in the real credential and streams the upstream reply back
unchanged (SSE included). Anything that reaches the proxy can still spend tokens through it for the
length of one trial, but cannot read the key.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
       "proxy-authenticate", "host", "content-length"}
AUTH = {"x-api-key", "authorization"}


class LoopbackServer:
    """An HTTP server on an ephemeral 127.0.0.1 port, served from a thread while used as a context manager."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeyProxy(LoopbackServer):
    """`with KeyProxy(upstream, headers) as p:` — give the CLI `p.url` and `p.token`."""

    def __init__(self, upstream: str, auth_headers: dict[str, str], timeout_s: float = 600) -> None:
        parts = urlsplit(upstream.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {upstream!r}")
        self.upstream, self.auth, self.timeout_s = parts, auth_headers, timeout_s
        self.token = "nightlab-" + secrets.token_hex(16)
        self.serve(_handler(self))

    def connect(self) -> http.client.HTTPConnection:
        u = self.upstream
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        return cls(u.hostname or "", u.port, timeout=self.timeout_s)


def _handler(proxy: KeyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0 replies end when the connection closes, so any upstream body can stream through as is.
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def _forward(self) -> None:
            sent = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
            if not secrets.compare_digest(sent.encode(), proxy.token.encode()):
                return self._reply(401, b'{"type":"error","error":{"type":"authentication_error",'
                                        b'"message":"nightlab key proxy: wrong token"}}')
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | AUTH}
            headers |= proxy.auth | {"content-length": str(len(body))}
            conn, started = proxy.connect(), False
            try:
                conn.request(self.command, proxy.upstream.path + self.path, body=body, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.end_headers()
                started = True
                while chunk := resp.read1(65536):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except OSError as e:
                if started:  # the reply is half sent; closing the connection is all that is left
                    return
                error = {"type": "error", "error": {"type": "api_error", "message": f"upstream: {e}"}}
                self._reply(502, json.dumps(error).encode())
            finally:
                conn.close()

        def _reply(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(data)

    return Handler
