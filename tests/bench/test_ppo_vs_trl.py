"""The PPO-vs-TRL benchmark's pure parts: statistics, paired ratios, the results schema, the
shared inputs, and that the varpo settings it passes are valid config keys mirroring TRL's.
No timing is asserted (timings live in benchmarks/results/)."""
import json
import random
import statistics

import bench_models
import numpy as np
import ppo_vs_trl as bench
import pytest


def _run(rng, n_steps, batch=16, tokens=16):
    steps = []
    for _ in range(n_steps):
        ph = {f"time/{p}": rng.uniform(0.01, 0.3) for p in ("generate", "score", "reference", "value", "update")}
        steps.append({"wall_s": sum(ph.values()) + rng.uniform(0.0, 0.2), "episodes": batch, "tokens": batch * tokens, **ph})
    return {"steps": steps, "peak_rss_mb": rng.uniform(300, 900), "settings": {"batch_size": batch}}


def test_summarize_matches_numpy_and_handles_empty():
    rng = random.Random(1)
    for n in (1, 2, 5, 8):
        xs = [rng.uniform(-3, 7) for _ in range(n)]
        s = bench.summarize(xs)
        assert s["n"] == n
        assert s["median"] == pytest.approx(float(np.median(np.array(xs, dtype=np.float64))), rel=1e-12)
        assert s["min"] == min(xs) and s["max"] == max(xs)
    assert bench.summarize([]) == {"min": None, "median": None, "max": None, "n": 0}
    assert bench.summarize([None, 2.0])["n"] == 1


def test_run_throughput_drops_warmup_and_splits_phases():
    rng = random.Random(2)
    run = _run(rng, 5, batch=12, tokens=7)
    t = bench.run_throughput(run, warmup=2)
    kept = run["steps"][2:]
    wall = 0.0
    for s in kept:  # independent loop, float64
        wall += s["wall_s"]
    assert t["episodes_per_s"] == pytest.approx(12 * 3 / wall, rel=1e-12)
    assert t["tokens_per_s"] == pytest.approx(12 * 7 * 3 / wall, rel=1e-12)
    assert t["measured_steps"] == 3
    for p in ("generate", "score", "reference", "value", "update"):
        assert t["phases_s"][p] == pytest.approx(sum(s[f"time/{p}"] for s in kept) / 3, rel=1e-12)
    # the phases and `other` add up to the mean step time
    assert sum(t["phases_s"].values()) == pytest.approx(wall / 3, rel=1e-12)
    with pytest.raises(ValueError, match="none left after 5 warm-up"):
        bench.run_throughput(run, warmup=5)


def test_paired_ratios_pair_by_round_only():
    num = {0: 10.0, 1: 12.0, 3: 9.0}
    den = {0: 5.0, 2: 4.0, 3: 3.0}
    assert bench.paired_ratios(num, den) == [2.0, 3.0]
    assert bench.paired_ratios({}, den) == []


def _fake_runs(rng, rounds, warmup_steps=3, fail=None):
    runs = []
    for r in range(rounds):
        for v in bench.VARIANTS:
            if fail == (r, v):
                runs.append({"round": r, "variant": v, "ok": False, "error": "exit 1"})
            else:
                runs.append({"round": r, "variant": v, "ok": True, "result": _run(rng, warmup_steps)})
    return runs


def _machine():
    return {"cpu_model": "test cpu", "cores": 2, "usable_cores": 2, "torch": "x", "trl": "1.12.0",
            "transformers": "y", "deepspeed": "z", "python": "3", "device": "cpu", "threads": 1,
            "loadavg_before": [0.1], "loadavg_after": [0.2], "shared_machine": False}


META = {"size": "tiny", "preset": {"batch_size": 16, "mini_batch_size": 8, "ppo_epochs": 2, "prompt_len": 16,
                                   "response_len": 16}, "n_params": 1}


def test_results_schema_and_ratio_is_median_of_paired_rounds(tmp_path):
    rng = random.Random(3)
    runs = _fake_runs(rng, rounds=4, fail=(2, "trl"))
    res = bench.build_results(runs, warmup=1, machine=_machine(), meta=META, command="python x --quick")
    bench.validate_results(res)
    # independent recomputation: per-run throughput after warm-up, paired by round
    eps = {}
    for r in runs:
        if r["ok"]:
            steps = r["result"]["steps"][1:]
            eps[(r["round"], r["variant"])] = sum(s["episodes"] for s in steps) / sum(s["wall_s"] for s in steps)
    ratios = [eps[(k, "varpo_vanilla")] / eps[(k, "trl")] for k in range(4) if (k, "trl") in eps]
    assert len(ratios) == 3  # round 2's TRL run failed: that round has no pair
    assert res["ratio_vs_trl"] == pytest.approx(statistics.median(ratios), rel=1e-12)
    assert res["ratios"]["varpo_vanilla_vs_trl"]["per_round"] == pytest.approx(ratios, rel=1e-12)
    va = [eps[(k, "varpo_variance_aware")] / eps[(k, "varpo_vanilla")] for k in range(4)]
    assert res["ratios"]["variance_aware_vs_vanilla"]["median"] == pytest.approx(statistics.median(va), rel=1e-12)
    trl_eps = [eps[(k, "trl")] for k in range(4) if (k, "trl") in eps]
    assert res["trl"]["episodes_per_s"] == pytest.approx(statistics.median(trl_eps), rel=1e-12)
    assert res["trl"]["episodes_per_s_stats"]["min"] == pytest.approx(min(trl_eps), rel=1e-12)
    assert res["trl"]["failed_runs"] == [{"round": 2, "error": "exit 1"}]
    for v in ("trl", "varpo_vanilla", "varpo_variance_aware"):
        assert res[v]["episodes_per_s"] > 0
    assert "varpo_vanilla_vs_trl_excluding_gc_collect" not in res["ratios"]  # no gc timer in these runs
    # the documents render and survive a JSON round trip
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert json.loads((tmp_path / "results.json").read_text())["ratio_vs_trl"] == pytest.approx(res["ratio_vs_trl"])
    md = bench.results_markdown(res)
    assert "ratio_vs_trl" in md and "test cpu" in md and "python x --quick" in md
    bench.plot(res, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_results_names_missing_keys():
    res = bench.build_results(_fake_runs(random.Random(4), 1), 1, _machine(), META, "c")
    del res["ratio_vs_trl"]
    del res["machine"]["trl"]
    del res["varpo_vanilla"]["episodes_per_s"]
    with pytest.raises(ValueError) as e:
        bench.validate_results(res)
    msg = str(e.value)
    assert "ratio_vs_trl" in msg and "machine.trl" in msg and "varpo_vanilla.episodes_per_s" in msg


def test_a_side_that_never_ran_keeps_the_contract_keys():
    runs = [r for r in _fake_runs(random.Random(5), 2) if r["variant"] == "trl"]
    res = bench.build_results(runs, 1, _machine(), META, "c")
    bench.validate_results(res)
    assert res["varpo_vanilla"]["episodes_per_s"] is None and res["ratio_vs_trl"] is None
    assert res["trl"]["episodes_per_s"] > 0


def test_vocabulary_tokenizer_and_prompts():
    words = bench_models.vocabulary(9000)  # crosses from 1- to 2- to 3-syllable words
    assert len(words) == len(set(words)) == 9000
    tok = bench_models.build_tokenizer(words[:300])
    assert tok.pad_token_id == tok.eos_token_id == bench_models.SPECIAL["</s>"]
    prompts = bench_models.make_prompts(words[:300], n=7, length=11, seed=0)
    for p in prompts:
        ids = tok(p)["input_ids"]
        assert len(ids) == 11 and tok.unk_token_id not in ids
        assert tok.decode(ids) == p
    assert prompts == bench_models.make_prompts(words[:300], n=7, length=11, seed=0)


def test_build_inputs_is_consistent_and_cached(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    meta = bench_models.build_inputs(tmp_path, "tiny", seed=0)
    p = bench_models.SIZES["tiny"]
    conf = AutoConfig.from_pretrained(meta["policy_path"])
    tok = AutoTokenizer.from_pretrained(meta["policy_path"])
    assert conf.vocab_size == len(tok) == meta["vocab_size"] == p.vocab_words + 3
    assert conf.eos_token_id == conf.pad_token_id == tok.eos_token_id == tok.pad_token_id
    prompts = bench_models.load_prompts(meta["prompts_path"])
    assert len(prompts) == p.n_prompts
    assert {len(tok(s)["input_ids"]) for s in prompts} == {p.prompt_len}
    stamp = (tmp_path / "policy" / "model.safetensors").stat().st_mtime_ns
    assert bench_models.build_inputs(tmp_path, "tiny", seed=0) == meta  # reused, not rebuilt
    assert (tmp_path / "policy" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="expected one of"):
        bench_models.build_inputs(tmp_path, "huge")


@pytest.mark.parametrize("variant", [v for v in bench.VARIANTS if v != "trl"])
def test_varpo_settings_are_valid_config_and_mirror_trl(variant):
    from varpo.config import load_config

    meta = {"preset": {**META["preset"]}, "policy_path": "/p/policy", "prompts_path": "/p/prompts.jsonl"}
    ov = bench.varpo_overrides(meta, variant, "/p/reward", steps=3, seed=0, lr=1e-5, kl_coef=0.1)
    cfg = load_config(None, bench.override_strings(ov))
    g, p = cfg.generation, cfg.ppo
    assert g.min_new_tokens == g.max_new_tokens == 16  # fixed response length, as forced on TRL
    assert (g.temperature, g.top_k, g.top_p) == (1.0, 0, 1.0)
    assert p.kl.estimator == "k1" and p.kl.beta == 0.1 and p.kl.controller == "fixed"
    assert (p.batch_size, p.mini_batch_size, p.ppo_epochs) == (16, 8, 2)
    if variant == "varpo_shared_trunk":  # the value head on the actor: no critic backbone
        assert cfg.model.critic == "shared_trunk" and cfg.model.critic_path is None
        assert cfg.model.policy_path == "/p/policy"
    else:
        assert cfg.model.critic == "separate"
        assert cfg.model.policy_path == cfg.model.critic_path == "/p/policy"
    assert cfg.reward.type == "ensemble" and cfg.reward.path == "/p/reward"
    assert p.variance.weighting == bench.VARIANTS[variant]["weighting"]
    assert g.max_prompt_len >= META["preset"]["prompt_len"]  # no prompt is truncated


def test_trl_gc_counterfactual_removes_only_gc_time():
    rng = random.Random(6)
    runs = _fake_runs(rng, rounds=2)
    for r in runs:
        if r["variant"] == "trl":
            for s in r["result"]["steps"]:
                s["time/update_gc_collect"] = 0.25 * s["time/update"]
    res = bench.build_results(runs, 1, _machine(), META, "c")
    for p, r in zip(res["trl"]["runs"], [r for r in runs if r["variant"] == "trl"]):
        steps = r["result"]["steps"][1:]
        expect = sum(s["episodes"] for s in steps) / sum(s["wall_s"] - s["time/update_gc_collect"] for s in steps)
        assert p["episodes_per_s_excluding_gc_collect"] == pytest.approx(expect, rel=1e-12)
    assert res["trl"]["detail_s"]["update_gc_collect"] > 0
    assert len(res["ratios"]["varpo_vanilla_vs_trl_excluding_gc_collect"]["per_round"]) == 2


def test_headline_keys_without_gc_collect_and_peak_memory(tmp_path):
    """ratio_vs_trl_excluding_gc_collect = median over rounds of vanilla / (TRL with its measured
    gc.collect seconds removed from each step); peak_memory_mb = median peak RSS; _resummarize
    rewrites an older results.json with them."""
    rng = random.Random(7)
    runs = _fake_runs(rng, rounds=3)
    for r in runs:
        if r["variant"] == "trl":
            for s in r["result"]["steps"]:
                s["time/update_gc_collect"] = rng.uniform(0.01, 0.1)
    res = bench.build_results(runs, warmup=1, machine=_machine(), meta=META, command="c")
    bench.validate_results(res)
    exp = []
    for k in range(3):
        trl = next(r["result"]["steps"][1:] for r in runs if r["round"] == k and r["variant"] == "trl")
        van = next(r["result"]["steps"][1:] for r in runs if r["round"] == k and r["variant"] == "varpo_vanilla")
        trl_ex = sum(s["episodes"] for s in trl) / sum(s["wall_s"] - s["time/update_gc_collect"] for s in trl)
        exp.append(sum(s["episodes"] for s in van) / sum(s["wall_s"] for s in van) / trl_ex)
    assert res["ratio_vs_trl_excluding_gc_collect"] == pytest.approx(statistics.median(exp), rel=1e-9)
    peaks = [r["result"]["peak_rss_mb"] for r in runs if r["variant"] == "varpo_variance_aware"]
    assert res["varpo_variance_aware"]["peak_memory_mb"] == pytest.approx(statistics.median(peaks))
    old = {k: v for k, v in res.items() if k not in ("ratio_vs_trl_excluding_gc_collect",)}
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert bench.main(["_resummarize", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["ratio_vs_trl_excluding_gc_collect"] == pytest.approx(res["ratio_vs_trl_excluding_gc_collect"])
    assert "ratio_vs_trl_excluding_gc_collect" in (tmp_path / "results.md").read_text()


def test_shared_trunk_variant_is_opt_in_and_paired_with_vanilla(tmp_path):
    """varpo_shared_trunk is not in the default --variants; when it ran, its ratio to vanilla is the
    median over rounds of the paired ratios, and without it the documents do not mention it."""
    assert "varpo_shared_trunk" in bench.VARIANTS and "varpo_shared_trunk" not in bench.DEFAULT_VARIANTS
    assert {"trl", "varpo_vanilla", "varpo_variance_aware"} <= set(bench.DEFAULT_VARIANTS)
    runs = _fake_runs(random.Random(8), rounds=3)
    res = bench.build_results(runs, 1, _machine(), META, "c")
    bench.validate_results(res)
    eps = {(r["round"], r["variant"]): sum(s["episodes"] for s in r["result"]["steps"][1:])
           / sum(s["wall_s"] for s in r["result"]["steps"][1:]) for r in runs}
    want = [eps[(k, "varpo_shared_trunk")] / eps[(k, "varpo_vanilla")] for k in range(3)]
    assert res["shared_trunk_vs_vanilla"] == pytest.approx(statistics.median(want), rel=1e-12)
    assert "varpo_shared_trunk" in bench.results_markdown(res)
    without = bench.build_results([r for r in runs if r["variant"] != "varpo_shared_trunk"], 1, _machine(), META, "c")
    bench.validate_results(without)
    assert "varpo_shared_trunk" not in without and "shared_trunk_vs_vanilla" not in without
    assert "shared_trunk" not in bench.results_markdown(without)
    bench.plot(without, tmp_path / "t.png")


def test_cpu_time_ratios_pair_rounds_and_remove_gc_cpu(tmp_path):
    """The CPU-time figures: per run, episodes per CPU second of the measured steps; ratios are
    medians of same-round pairs; TRL's counterfactual removes its gc.collect CPU seconds only."""
    rng = random.Random(7)
    runs = []
    for r in range(3):
        for v in ("trl", "varpo_vanilla", "varpo_variance_aware"):
            run = _run(rng, 4, batch=8, tokens=5)
            for s in run["steps"]:
                s["cpu_s"] = s["wall_s"] * rng.uniform(0.3, 0.95)
                if v == "trl":
                    s["cpu/update_gc_collect"] = s["cpu_s"] * rng.uniform(0.01, 0.1)
            runs.append({"round": r, "variant": v, "ok": True, "result": run})
    res = bench.build_results(runs, warmup=1, machine=_machine(), meta=META, command="x")

    def eps_cpu(v, r, drop_gc=False):  # independent: straight from the raw rows, float64
        rows = next(x for x in runs if x["variant"] == v and x["round"] == r)["result"]["steps"][1:]
        cpu = sum(s["cpu_s"] - (s.get("cpu/update_gc_collect", 0.0) if drop_gc else 0.0) for s in rows)
        return 8 * len(rows) / cpu

    van = [eps_cpu("varpo_vanilla", r) / eps_cpu("trl", r) for r in range(3)]
    va = [eps_cpu("varpo_variance_aware", r) / eps_cpu("varpo_vanilla", r) for r in range(3)]
    ex = [eps_cpu("varpo_vanilla", r) / eps_cpu("trl", r, drop_gc=True) for r in range(3)]
    assert res["ratio_vs_trl_cpu_time"] == pytest.approx(statistics.median(van), rel=1e-12)
    assert res["variance_aware_vs_vanilla_cpu_time"] == pytest.approx(statistics.median(va), rel=1e-12)
    assert res["ratio_vs_trl_excluding_gc_collect_cpu_time"] == pytest.approx(statistics.median(ex), rel=1e-12)
    assert res["ratios"]["varpo_vanilla_vs_trl_cpu_time"]["per_round"] == pytest.approx(van, rel=1e-12)
    assert "ratio_vs_trl_cpu_time" in bench.results_markdown(res)
    # runs recorded before cpu_s existed: the CPU figures are absent, nothing else changes
    for x in runs:
        for s in x["result"]["steps"]:
            s.pop("cpu_s")
    old = bench.build_results(runs, warmup=1, machine=_machine(), meta=META, command="x")
    assert old["ratio_vs_trl_cpu_time"] is None and old["ratio_vs_trl"] == res["ratio_vs_trl"]


def test_round_order_is_a_latin_square_and_fixed_keeps_the_order():
    vs = ["trl", "varpo_vanilla", "varpo_variance_aware", "varpo_1head"]
    orders = [bench.round_order(vs, r) for r in range(len(vs))]
    for o in orders:  # every round runs every variant once
        assert sorted(o) == sorted(vs)
    for pos in range(len(vs)):  # over len(vs) rounds every variant takes every position once
        assert sorted(o[pos] for o in orders) == sorted(vs)
    assert bench.round_order(vs, len(vs)) == vs  # the cycle repeats
    assert bench.round_order(vs, 2, "fixed") == vs


def test_position_effect_recovers_a_slow_last_position():
    """Runs in position 2 are made 20% slower whatever the variant: the per-position figure shows it,
    and with a rotating order the variance-aware/vanilla ratio's median is unaffected."""
    rng = random.Random(11)
    vs = ["trl", "varpo_vanilla", "varpo_variance_aware"]
    runs = []
    for r in range(6):
        for pos, v in enumerate(bench.round_order(vs, r)):
            res = _run(rng, 3)
            for s in res["steps"]:
                s["wall_s"] = 1.0 * (1.25 if pos == 2 else 1.0)  # equal speed apart from position
            runs.append({"round": r, "variant": v, "position": pos, "ok": True, "result": res})
    res = bench.build_results(runs, warmup=1, machine=_machine(), meta=META, command="c")
    pe = res["position_effect"]
    assert set(pe) == {"0", "1", "2"} and all(e["n"] == 6 for e in pe.values())
    assert pe["0"]["median"] == pytest.approx(1.0) and pe["2"]["median"] == pytest.approx(0.8)
    assert res["variance_aware_vs_vanilla"] == pytest.approx(1.0)
    assert "position 2: 0.8" in bench.results_markdown(res)


def _probe(flops_per_s=50e9, bytes_per_s=10e9):
    return {"matmul": {"flops_per_s": flops_per_s, "dtype": "float32", "threads": 1, "device": "cpu"},
            "memory": {"bytes_per_s": bytes_per_s}}


def test_mfu_per_phase_startup_and_breakeven(tmp_path):
    """Utilisation per phase = the measured steps' FLOPs / their seconds / the peak probed before
    that round; varpo_vllm's start-up stays out of its throughput and is paid back after
    startup / (vanilla step − vLLM step) steps, per round."""
    rng = random.Random(12)
    vs = ["trl", "varpo_vanilla", "varpo_vllm"]
    runs, roofline = [], {}
    for r in range(3):
        roofline[r] = _probe(flops_per_s=rng.uniform(40e9, 60e9), bytes_per_s=rng.uniform(5e9, 15e9))
        for v in vs:
            run = _run(rng, 4)
            for s in run["steps"]:
                s.update({f"flops/{ph}": rng.uniform(1e9, 5e9) for ph in bench.MFU_PHASES})
                s["bytes/generate"] = rng.uniform(1e9, 2e9)
            if v == "varpo_vllm":
                run["startup_s"] = rng.uniform(20, 60)
                for s in run["steps"]:  # faster steps in rounds 0 and 1, slower in round 2
                    s["wall_s"] *= 0.5 if r < 2 else 3.0
            runs.append({"round": r, "variant": v, "position": vs.index(v), "ok": True, "result": run})
    res = bench.build_results(runs, warmup=1, machine=_machine(), meta=META, command="c", roofline=roofline)
    bench.validate_results(res)

    def raw(v, r):
        return next(x for x in runs if x["variant"] == v and x["round"] == r)["result"]

    for v in vs:
        for ph in bench.MFU_PHASES:  # independent recomputation from the raw rows
            per_run = []
            for r in range(3):
                steps = raw(v, r)["steps"][1:]
                rate = sum(s[f"flops/{ph}"] for s in steps) / sum(s[f"time/{ph}"] for s in steps)
                per_run.append(rate / roofline[r]["matmul"]["flops_per_s"])
            assert res[v]["mfu"][ph] == pytest.approx(statistics.median(per_run), rel=1e-12), (v, ph)
        bw = []
        for r in range(3):
            steps = raw(v, r)["steps"][1:]
            bw.append(sum(s["bytes/generate"] for s in steps) / sum(s["time/generate"] for s in steps)
                      / roofline[r]["memory"]["bytes_per_s"])
        assert res[v]["generate_bandwidth_fraction"] == pytest.approx(statistics.median(bw), rel=1e-12)
        if v != "trl":
            assert res[v]["ratio_vs_trl"] == res["ratios"][f"{v}_vs_trl"]["median"]
    starts = [raw("varpo_vllm", r)["startup_s"] for r in range(3)]
    assert res["varpo_vllm"]["startup_s"] == pytest.approx(statistics.median(starts))
    assert res["varpo_vanilla"].get("startup_s") is None
    be = res["varpo_vllm"]["breakeven_steps"]
    step = {(v, r): sum(s["wall_s"] for s in raw(v, r)["steps"][1:]) / 3 for v in vs for r in range(3)}
    want = [starts[r] / (step[("varpo_vanilla", r)] - step[("varpo_vllm", r)]) for r in range(2)]
    assert be["per_round"][:2] == pytest.approx(want, rel=1e-12) and be["per_round"][2] is None
    assert be["never"] == 1 and be["median"] == pytest.approx(statistics.median(want), rel=1e-12)
    assert res["roofline"]["matmul_flops_per_s"]["n"] == 3
    md = bench.results_markdown(res)
    assert "Model FLOPs utilisation" in md and "varpo_vllm: start-up" in md and "never" in md
    bench.plot(res, tmp_path / "t.png")


def test_validate_results_names_missing_contract_keys_per_variant():
    """Issue 26's contract per variant that ran: ratio_vs_trl, mfu for the four phases where peaks
    were probed, and for varpo_vllm startup_s and breakeven_steps."""
    rng = random.Random(21)
    runs, roofline = [], {0: _probe()}
    for v in ("trl", "varpo_vanilla", "varpo_vllm"):
        run = _run(rng, 3)
        for s in run["steps"]:
            s.update({f"flops/{ph}": 1e9 for ph in bench.MFU_PHASES})
        run["startup_s"] = 30.0 if v == "varpo_vllm" else None
        if v == "varpo_vllm":
            run["startup_parts_s"] = {"import_s": 26.0, "engine_s": 4.0}
        runs.append({"round": 0, "variant": v, "position": 0, "ok": True, "result": run})
    res = bench.build_results(runs, 1, _machine(), META, "c", roofline=roofline)
    bench.validate_results(res)
    assert res["varpo_vllm"]["startup_s"] == 30.0 and set(res["varpo_vllm"]["mfu"]) == set(bench.MFU_PHASES)
    assert "importing vLLM 26 s, building the engine 4 s" in bench.results_markdown(res)
    del res["varpo_vllm"]["startup_s"]
    del res["varpo_vllm"]["ratio_vs_trl"]
    del res["varpo_vanilla"]["mfu"]["update"]
    del res["trl"]["mfu"]
    with pytest.raises(ValueError) as e:
        bench.validate_results(res)
    msg = str(e.value)
    for key in ("varpo_vllm.startup_s", "varpo_vllm.ratio_vs_trl", "varpo_vanilla.mfu.update", "trl.mfu.generate"):
        assert key in msg, key
    assert "varpo_vllm.breakeven_steps" not in msg and "varpo_vanilla.mfu.value" not in msg


def test_breakeven_counts_the_extra_setup_against_vanilla_in_the_same_round():
    """The seconds vLLM costs before its first step: its setup minus varpo_vanilla's (imports and
    engine included), or its startup_s where a run has no setup time; paid back per faster step."""
    vllm = [{"round": 0, "step_s": 5.0, "startup_s": 20.0, "setup_s": 60.0},
            {"round": 1, "step_s": 9.0, "startup_s": 20.0, "setup_s": 50.0},
            {"round": 2, "step_s": 4.0, "startup_s": 30.0},
            {"round": 3, "step_s": 4.0, "startup_s": 30.0, "setup_s": 40.0}]  # no vanilla run in round 3
    hf = [{"round": 0, "step_s": 8.0, "setup_s": 15.0}, {"round": 1, "step_s": 8.0, "setup_s": 14.0},
          {"round": 2, "step_s": 7.0, "setup_s": 10.0}]
    be = bench.breakeven_steps(vllm, hf)
    assert be["extra_setup_s_per_round"] == [45.0, 36.0, 30.0]
    assert be["per_round"][0] == pytest.approx(45.0 / 3.0) and be["per_round"][1] is None
    assert be["per_round"][2] == pytest.approx(30.0 / 3.0)
    assert be["never"] == 1 and be["n"] == 2 and be["median"] == pytest.approx((15.0 + 10.0) / 2)


def test_vllm_variant_runs_vllm_rollouts_and_is_opt_in():
    assert "varpo_vllm" not in bench.DEFAULT_VARIANTS
    ov = bench.varpo_overrides({"preset": dict(META["preset"]), "policy_path": "/p", "prompts_path": "/q"},
                               "varpo_vllm", "/r", steps=2, seed=0, lr=1e-5, kl_coef=0.1)
    assert ov["generation.backend"] == "vllm"
    assert bench.varpo_overrides({"preset": dict(META["preset"]), "policy_path": "/p", "prompts_path": "/q"},
                                 "varpo_vanilla", "/r", 2, 0, 1e-5, 0.1)["generation.backend"] == "hf"


def test_a_missing_vllm_environment_is_named(tmp_path):
    with pytest.raises(SystemExit, match="setup_vllm_env.sh"):
        bench.vllm_python(tmp_path / "nowhere")


def test_trl_step_flops_count_the_workload(tmp_path):
    """TRL's FLOPs per step from the preset: a hand count on the tiny preset's Llama."""
    meta = bench_models.build_inputs(tmp_path, "tiny", seed=0)
    p = bench_models.SIZES["tiny"]
    f = bench.trl_step_flops(meta)
    H, L, inner, V = p.hidden, p.layers, p.intermediate, meta["vocab_size"]
    body = 2 * L * (4 * H * H + 3 * H * inner)  # per token: Q, K, V, O and the gated MLP
    B, P, T = p.batch_size, p.prompt_len, p.response_len
    seq = P + T
    attn = 4 * L * H * seq * seq  # per sequence, all heads
    fwd = B * (seq * body + attn) + B * T * 2 * H * V  # LM head at the response positions
    critic = B * (seq * body + attn + 2 * H * seq)  # value head at every position
    assert f["flops/reference"] == fwd and f["flops/value"] == critic
    assert f["flops/update"] == p.ppo_epochs * 3 * (fwd + critic)
    assert f["flops/generate"] > 0


def test_roofline_probe_and_utilisation():
    import roofline

    got = roofline.matmul_peak("float32", "cpu", sizes=(64, 96), budget_s=0.05)
    assert got["flops_per_s"] > 0 and set(got["per_size"]) == {64, 96}
    assert roofline.memory_bandwidth("cpu", nbytes=2**20, repeats=2)["bytes_per_s"] > 0
    u = roofline.utilisation({"update": 8e9, "value": 0.0, "generate": 1e9},
                             {"update": 2.0, "value": 1.0, "generate": 0.5}, 8e9, generate_bytes=2e9, bandwidth=16e9)
    assert u["flops_per_s"] == {"update": 4e9, "value": None, "generate": 2e9}
    assert u["mfu"] == {"update": 0.5, "value": None, "generate": 0.25}
    assert u["generate_bytes_per_s"] == 4e9 and u["generate_bandwidth_fraction"] == 0.25


def test_children_of_other_venvs_do_not_inherit_this_venvs_extension_cache():
    """A vLLM (or TRL) child given this venv's TORCH_EXTENSIONS_DIR rebuilt DeepSpeed's CPU op there
    for its own torch: such children get the environment without it, everything else kept."""
    env = bench.child_env("cpu", 1)
    env["TORCH_EXTENSIONS_DIR"] = "/somewhere/.venv/torch_extensions"
    other = bench.foreign_env(env)
    assert "TORCH_EXTENSIONS_DIR" not in other and "TORCH_EXTENSIONS_DIR" in env
    assert {k: v for k, v in env.items() if k != "TORCH_EXTENSIONS_DIR"} == other
    assert other["OMP_NUM_THREADS"] == "1" and other["DS_ACCELERATOR"] == "cpu"
