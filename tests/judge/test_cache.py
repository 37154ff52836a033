"""The SQLite answer cache: keys, hits, and many writers (threads and processes) at once."""
import multiprocessing as mp
import sqlite3
import threading

from varpo.judge import JudgeCache, JudgeScorer, cache_key


def _key(**kw):
    base = {"base_url": "http://h/v1", "model": "m", "template_sha256": "t", "bounds": (0.0, 10.0), "prompt": "p",
            "response": "r", "temperature": 0.0, "max_tokens": 64}
    base.update(kw)
    return cache_key(**base)


def test_key_covers_everything_that_changes_the_answer():
    k = _key()
    assert _key() == k and _key(base_url="http://h/v1/") == k  # a trailing slash is the same endpoint
    changed = [_key(base_url="http://g/v1"), _key(model="m2"), _key(template_sha256="u"), _key(bounds=(0.0, 5.0)),
               _key(prompt="p2"), _key(response="r2"), _key(temperature=0.7), _key(max_tokens=65)]
    assert len({k, *changed}) == 9


def _writer(path, worker, n, out):
    cache = JudgeCache(path)
    for i in range(n):
        cache.put(f"k{i}", float(i), float(i) + 1, f"w{worker}", "m")  # every worker writes every key
    out.put(len(cache))
    cache.close()


def test_concurrent_writers_threads_and_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    JudgeCache(path).close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), w, 150, q)) for w in range(3)]
    for p in procs:
        p.start()
    shared = JudgeCache(path)  # one object used by several threads, as the CLI and scorer may
    errors = []

    def thread_writer(w):
        try:
            for i in range(100, 250):
                shared.put(f"k{i}", float(i), float(i) + 1, f"t{w}", "m")
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert not errors
    assert len(shared) == 250
    for i in (0, 99, 100, 149, 150, 249):
        assert shared.get(f"k{i}") == (float(i), float(i) + 1)
    assert shared.get("missing") is None
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    shared.close()


def test_rerun_hits_cache_and_template_change_misses(server, make_config, tmp_path):
    prompts, responses = ["p"] * 5, [f"r{i}" for i in range(5)]
    s1 = JudgeScorer(make_config(server.base_url))
    a = s1.score(prompts, responses)
    s1.close()
    assert server.requests == 5
    s2 = JudgeScorer(make_config(server.base_url))  # a new process would see the same file
    b = s2.score(prompts, responses)
    assert server.requests == 5 and s2.stats_summary()[0]["cache_hits"] == 5
    assert (a.extras["low"] == b.extras["low"]).all() and (a.score == b.score).all()
    s2.close()
    tpl = tmp_path / "other.jinja"
    tpl.write_text("Judge {{ response }} (prompt: {{ prompt }}) with JSON low/high in [{{ lo }}, {{ hi }}].")
    s3 = JudgeScorer(make_config(server.base_url, template=str(tpl)))
    s3.score(prompts, responses)
    assert server.requests == 10 and s3.stats_summary()[0]["cache_hits"] == 0
    s3.close()


def test_invalid_answers_are_not_cached(server, make_config):
    s1 = JudgeScorer(make_config(server.base_url, on_invalid="drop", max_reasks=0))
    s1.score(["p"], ["r [[fault:oob:1]]"])
    s1.close()
    s2 = JudgeScorer(make_config(server.base_url, on_invalid="drop", max_reasks=0))
    out = s2.score(["p"], ["r [[fault:oob:1]]"])  # the second ask gets a valid answer, then cached
    assert bool(out.valid.all()) and server.requests == 2
    assert len(s2.panel.cache) == 1
    s2.close()
