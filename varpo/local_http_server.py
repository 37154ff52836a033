"""The scaffolding of varpo's in-process HTTP servers (the test judge, varpo.judge.local_server; the
reward server, varpo.reward.server): a threaded HTTP/1.1 server with keep-alive on a background
thread, counting requests and the most handled at once, used as `with Server(...) as srv:`.
Subclasses answer POSTs in `_handle(h)` and GETs in `_get(h)`."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class _Server(ThreadingHTTPServer):
    # stopping waits for requests in flight (server_close joins their threads): a handler still
    # working after its client timed out must not outlive the server and run in its host process
    # afterwards (the test suite saw such a late reward call)
    daemon_threads = False
    block_on_close = True

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # clients hanging up are normal here


class LocalHTTPServer:
    """Binds `host:port` (0: a free port); `base_url` ends in /v1. `requests` counts POSTs,
    `max_inflight` the most handled at once (checks a client's concurrency bound)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.lock = threading.Lock()
        self.requests = self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY, Nagle + the client's
            # delayed ACK add ~40 ms to every keep-alive request
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._get(self)

            def do_POST(self):
                with server.lock:
                    server.requests += 1
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    server._handle(self)
                finally:
                    with server.lock:
                        server.inflight -= 1

        self.httpd = _Server((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        h.send_error(404)

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
