"""A reference reward server speaking varpo's reward protocol (docs/remote_reward.md), serving a
trained ensemble folder with the in-process scorer (varpo.reward.scorer): what `reward.type=remote`
with `reward.remote.backend=direct` talks to, and a template for serving any reward model.

    python -m varpo.reward.server --reward-path DIR --model NAME [--host 127.0.0.1] [--port 8001]

  POST {base}/v1/rewards  {"model": NAME, "items": [{"prompt": p, "response": r}, ...]}
       -> 200 {"model": NAME, "protocol": "varpo-reward/1",
               "rewards": [{"reward": s, "variance": σ², "eval_reward": m, "heads": [r_1..r_K]}, ...]}
       -> 400 malformed request, 404 another model; {"error": {"message": ...}}
  GET  {base}/v1/health   -> 200 {"status": "ok", "model": NAME, "protocol": ...}

s, σ² and m are the scorer's for the aggregation, ddof, λ, k and max_length given on the command
line (the trainer's defaults unless set). Requests are scored one at a time (one model in memory);
an HTTP/1.1 keep-alive server on threads. `--fail-first N` answers the first N scoring requests
with 503 (tests and drills of the client's retries).
"""
from __future__ import annotations

import json
import threading

from ..local_http_server import LocalHTTPServer
from .remote import PROTOCOL


class RewardServer(LocalHTTPServer):
    """`with RewardServer(scorer, model=NAME) as srv:`; `srv.base_url` ends in /v1. `scorer` is any
    varpo.reward_source.Scorer. Counts requests and the most it handled at once."""

    def __init__(self, scorer, *, model: str, host: str = "127.0.0.1", port: int = 0, fail_first: int = 0,
                 latency: float = 0.0):
        self.scorer, self.model, self.fail_first, self.latency = scorer, model, fail_first, latency
        super().__init__(host, port)
        self.score_lock = threading.Lock()
        self.scored = 0

    def _get(self, h) -> None:
        if h.path.rstrip("/") in ("/v1/health", "/health"):
            return self._send(h, 200, {"status": "ok", "model": self.model, "protocol": PROTOCOL})
        return self._error(h, 404, f"no route GET {h.path}")

    def _send(self, h, status: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer came

    def _error(self, h, status: int, message: str, headers: dict | None = None) -> None:
        self._send(h, status, {"error": {"message": message, "code": status}}, headers)

    def _handle(self, h) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.path.rstrip("/") not in ("/v1/rewards", "/rewards"):
            return self._error(h, 404, f"no route POST {h.path} (this server answers POST /v1/rewards)")
        with self.lock:
            failing = self.requests <= self.fail_first
        if failing:
            return self._error(h, 503, "injected failure (--fail-first)", {"Retry-After": "0"})
        try:
            req = json.loads(raw)
            items = req["items"]
            prompts = [str(x["prompt"]) for x in items]
            responses = [str(x["response"]) for x in items]
        except (ValueError, KeyError, TypeError):
            return self._error(h, 400, 'expected {"model": ..., "items": [{"prompt": ..., "response": ...}]}')
        if req.get("model") not in (None, self.model):
            return self._error(h, 404, f"this server serves model {self.model!r}, not {req.get('model')!r}")
        if self.latency:
            import time

            time.sleep(self.latency)
        with self.score_lock:
            s = self.scorer.score(prompts, responses)
            self.scored += len(prompts)
        heads = s.extras.get("per_head")
        ev = s.eval_reward if s.eval_reward is not None else s.score
        rows = [{"reward": float(s.score[i]), "variance": float(s.variance[i]), "eval_reward": float(ev[i]),
                 "heads": heads[i].tolist() if heads is not None else None} for i in range(len(s.score))]
        self._send(h, 200, {"model": self.model, "protocol": PROTOCOL, "rewards": rows})


def main() -> None:
    import argparse

    from ..config import RewardConfig

    d = RewardConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reward-path", required=True, help="a trained ensemble folder (varpo train-rm's reward_model/)")
    ap.add_argument("--model", required=True, help="the name clients send as reward.remote.model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--aggregation", default=d.aggregation)
    ap.add_argument("--ddof", type=int, default=d.ddof)
    ap.add_argument("--lam", type=float, default=d.lam)
    ap.add_argument("--k", type=float, default=d.k)
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--fail-first", type=int, default=0, help="answer the first N scoring requests with 503")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every scoring request")
    a = ap.parse_args()
    from .scorer import load_scorer

    rcfg = RewardConfig(aggregation=a.aggregation, ddof=a.ddof, lam=a.lam, k=a.k, max_length=a.max_length,
                        batch_size=a.batch_size)
    scorer = load_scorer(a.reward_path, cfg=rcfg)
    srv = RewardServer(scorer, model=a.model, host=a.host, port=a.port, fail_first=a.fail_first, latency=a.latency)
    print(f"reward server on {srv.base_url} (model {a.model})", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
