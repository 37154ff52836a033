"""A deterministic OpenAI-compatible chat-completions judge on 127.0.0.1, for tests, benchmarks and
offline demos. Not a mock: it speaks HTTP/1.1 with keep-alive like a real server.

The answer to a conversation is an interval derived from a SHA-256 of its first user message, so a
given (prompt, response) always gets the same interval. Faults are injected on demand by a
directive inside the message text, `[[fault:KIND:N]]`, which makes the first N requests carrying
that message misbehave (N = "always" for every request):

  delay      sleep `delay_s` (past the client's timeout) before answering
  500        HTTP 500
  429        HTTP 429 with `Retry-After: <retry_after>`
  drop       close the connection without sending a response
  badbody    HTTP 200 whose body is not JSON
  malformed  an answer that is not JSON (`{"low": 3, "high":`)
  inverted   {"low": b, "high": a} with b > a
  oob        an interval outside the bounds
  fenced     the valid answer inside a ```json fence (not a fault: a format)
  bracket    the valid answer as "[a, b]" (a format)
  echo_auth  HTTP 400 whose error message repeats the Authorization header (a leaky server)

Run standalone: python -m varpo.judge.local_server --port 8000 [--latency 0.05].
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

from ..local_http_server import LocalHTTPServer

_FAULT = re.compile(r"\[\[fault:([a-z_0-9]+):(\d+|always)\]\]")


def reference_interval(text: str, lo: float = 0.0, hi: float = 10.0) -> tuple[float, float]:
    """The interval the server answers for a first user message `text` (rounded to 0.01)."""
    h = hashlib.sha256(text.encode()).digest()
    u1, u2 = int.from_bytes(h[:4], "big") / 2**32, int.from_bytes(h[4:8], "big") / 2**32
    width = round((hi - lo) * 0.5 * u2, 2)
    low = round(lo + (hi - lo - width) * u1, 2)
    return low, round(low + width, 2)


class JudgeServer(LocalHTTPServer):
    """Start with `with JudgeServer() as srv:`; `srv.base_url` ends in /v1. Counts requests."""

    def __init__(self, *, port: int = 0, bounds: tuple[float, float] = (0.0, 10.0), latency: float = 0.0,
                 delay_s: float = 1.0, retry_after: str = "1", require_key: str | None = None, salt: str = ""):
        self.bounds, self.latency, self.delay_s, self.retry_after = bounds, latency, delay_s, retry_after
        self.require_key = require_key
        self.salt = salt  # a different salt: a judge with other opinions
        super().__init__("127.0.0.1", port)  # requests: every HTTP POST received; max_inflight
        self.seen: Counter[str] = Counter()  # requests per first user message
        self.times: dict[str, list[float]] = {}  # arrival times per first user message
        self.auth_headers: list[str] = []

    # -- protocol ------------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _error(self, h, status: int, message: str, headers: dict | None = None) -> None:
        body = json.dumps({"error": {"message": message, "type": "server_error", "code": status}}).encode()
        self._send(h, status, body, headers)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if h.path.rstrip("/") != "/v1/chat/completions":
            return self._error(h, 404, f"no route {h.path}")
        try:
            req = json.loads(raw)
            messages = req["messages"]
            first = next(m["content"] for m in messages if m["role"] == "user")
        except (ValueError, KeyError, StopIteration, TypeError):
            return self._error(h, 400, "expected a chat-completions request with a user message")
        auth = h.headers.get("Authorization", "")
        with self.lock:
            self.seen[first] += 1
            nth = self.seen[first]
            self.times.setdefault(first, []).append(time.monotonic())
            self.auth_headers.append(auth)
        if self.require_key is not None and auth != f"Bearer {self.require_key}":
            return self._error(h, 401, "invalid api key")
        if self.latency:
            time.sleep(self.latency)
        fault = None
        for kind, n in _FAULT.findall(first):
            if n == "always" or nth <= int(n):
                fault = kind
                break
        lo, hi = self.bounds
        a, b = reference_interval(self.salt + first, lo, hi)
        content = json.dumps({"low": a, "high": b})
        if fault == "delay":
            time.sleep(self.delay_s)
        elif fault == "500":
            return self._error(h, 500, "injected internal error")
        elif fault == "429":
            return self._error(h, 429, "injected rate limit", {"Retry-After": self.retry_after})
        elif fault == "drop":
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        elif fault == "badbody":
            return self._send(h, 200, b"<html>this is not json")
        elif fault == "echo_auth":
            return self._error(h, 400, f"bad request; you sent Authorization: {auth}")
        elif fault == "malformed":
            content = '{"low": 3, "high":'
        elif fault == "inverted":
            content = json.dumps({"low": b + 1.0, "high": a})
        elif fault == "oob":
            content = json.dumps({"low": lo - 1.0, "high": hi + 1.0})
        elif fault == "fenced":
            content = f"Here is my rating:\n```json\n{content}\n```"
        elif fault == "bracket":
            content = f"My interval is [{a}, {b}]."
        body = {
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", "local-judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(first.split()), "completion_tokens": 8, "total_tokens": len(first.split()) + 8},
        }
        try:
            self._send(h, 200, json.dumps(body).encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer came


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = ap.parse_args()
    srv = JudgeServer(port=args.port, latency=args.latency)
    print(f"judge server on {srv.base_url}", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
