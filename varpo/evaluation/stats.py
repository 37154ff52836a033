"""Statistics of policy populations (paper Tables 1–4), with scipy.

Input: one number per policy — its mean true reward over the evaluation prompts — grouped by
method: {"reference": [...], "vanilla": [...], "variance_aware": [...], ...}. "reference" holds the
sampling runs of π_ref.

Conventions (all stated in the outputs too):
- var is the sample variance with ddof=1 (unbiased); every method needs n ≥ 2.
- F-test of variances, a vs b: F = s²_a / s²_b with (n_a − 1, n_b − 1) degrees of freedom;
  f_crit = F_0.95(n_a − 1, n_b − 1); f_pvalue is one-sided, H1: σ²_a > σ²_b (P(F' ≥ F)).
- Welch's t-test of means: t = (m_a − m_b) / sqrt(s²_a/n_a + s²_b/n_b), Welch–Satterthwaite df;
  welch_crit = t_0.975(df) and welch_pvalue are two-sided.
- risk (the paper's P(R(π) < R(π_ref))): the fraction of a method's policies whose reward is below
  R(π_ref), estimated by the mean reward of the reference runs; Wilson interval at 95%. The
  reference mean is treated as known (its own sampling error is not propagated). `risk_pairwise`
  is the alternative P(R_π < R_ref) over all (policy, reference run) pairs, ties counting ½.
- Two-proportion z-test of the risks, a vs b: pooled p̂ = (k_a + k_b)/(n_a + n_b),
  z = (p̂_a − p̂_b) / sqrt(p̂(1 − p̂)(1/n_a + 1/n_b)); risk_pvalue two-sided, risk_pvalue_greater
  one-sided with H1: risk_a > risk_b (z = 0, p = 1 when both proportions are 0 or both 1).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95


class PopulationError(ValueError):
    """A population folder or row that cannot be read; the message names the file and field."""


def _num(x: float) -> float | None:
    """JSON-safe float: non-finite values (an F with a zero denominator) become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """Wilson score interval [lo, hi] for k successes in n trials."""
    ci = st.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def f_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """One-sided F-test of H1: var(a) > var(b) (ddof=1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    dfa, dfb = a.size - 1, b.size - 1
    va, vb = a.var(ddof=1), b.var(ddof=1)
    f = va / vb if vb > 0 else (math.inf if va > 0 else math.nan)
    return {"f_stat": _num(f), "f_crit": float(st.f.ppf(confidence, dfa, dfb)),
            "f_pvalue": _num(st.f.sf(f, dfa, dfb)) if math.isfinite(f) else (0.0 if f == math.inf else None),
            "f_df": [dfa, dfb], "variance_ratio": _num(f)}


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Welch's two-sided t-test of equal means."""
    res = st.ttest_ind(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), equal_var=False)
    df = float(res.df)
    return {"welch_t": _num(res.statistic), "welch_df": _num(df),
            "welch_crit": _num(st.t.ppf(1 - (1 - confidence) / 2, df)) if math.isfinite(df) else None,
            "welch_pvalue": _num(res.pvalue)}


def two_proportion_test(k_a: int, n_a: int, k_b: int, n_b: int) -> dict:
    """Pooled two-proportion z-test of p_a = p_b."""
    p_a, p_b = k_a / n_a, k_b / n_b
    p = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
    z = (p_a - p_b) / se if se > 0 else 0.0
    return {"risk_diff": p_a - p_b, "risk_z": z, "risk_pvalue": float(2 * st.norm.sf(abs(z))),
            "risk_pvalue_greater": float(st.norm.sf(z)) if se > 0 else 1.0}


def _check(rewards_by_method: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    out = {}
    for m, r in rewards_by_method.items():
        a = np.asarray(list(r), dtype=np.float64)
        if a.ndim != 1 or a.size < 2:
            raise ValueError(f"method {m!r}: need at least 2 policies for a variance (ddof=1), got {a.size}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"method {m!r}: rewards must be finite, got {a[~np.isfinite(a)].tolist()}")
        out[m] = a
    return out


def compare(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray, per_method: dict,
            confidence: float = CONFIDENCE) -> dict:
    """F-test, Welch's t-test and (when risks exist) the two-proportion test, a vs b."""
    row = {"a": a_name, "b": b_name, **f_test(a, b, confidence), **welch_test(a, b, confidence)}
    ra, rb = per_method[a_name], per_method[b_name]
    if ra.get("risk") is not None:
        row.update({"risk_a": ra["risk"], "risk_b": rb["risk"],
                    **two_proportion_test(ra["risk_count"], ra["n"], rb["risk_count"], rb["n"])})
    return row


def compute_stats(rewards_by_method: dict[str, list[float]], reference: str = "reference",
                  baseline: str = "vanilla", confidence: float = CONFIDENCE,
                  eval_noise: Mapping[str, float] | None = None) -> dict:
    """The paper's Tables 1–3 for a population: per method mean, var (ddof=1), n, risk (+ Wilson
    CI, pairwise risk); `comparisons` for the baseline against every other policy method and for
    every other pair; top-level f_stat, f_crit, f_pvalue, welch_t, welch_pvalue (+ df, crit) for
    the primary pair (baseline vs variance_aware, else baseline vs the first other method).
    Without a `reference` method, risks are None. `eval_noise` ({method: mean reward_se²}, see
    `evaluation_noise`) adds eval_noise_var and var_excess = var − eval_noise_var per method: the
    spread that training, not re-sampling the evaluation, put between the policies."""
    data = _check(rewards_by_method)
    if baseline not in data:
        raise ValueError(f"baseline method {baseline!r} not in the population (methods: {sorted(data)})")
    ref = data.get(reference)
    ref_mean = float(ref.mean()) if ref is not None else None
    per_method: dict = {}
    for m, a in data.items():
        row = {"mean": float(a.mean()), "var": float(a.var(ddof=1)), "std": float(a.std(ddof=1)), "n": int(a.size),
               "min": float(a.min()), "max": float(a.max())}
        noise = (eval_noise or {}).get(m)
        row.update({"eval_noise_var": noise, "var_excess": None if noise is None else row["var"] - noise})
        if ref is not None:
            k = int(np.sum(a < ref_mean))
            pair = float(np.mean((a[:, None] < ref[None, :]) + 0.5 * (a[:, None] == ref[None, :])))
            row.update({"risk": k / a.size, "risk_count": k, "risk_ci95": wilson_interval(k, a.size, confidence),
                        "risk_pairwise": pair})
        else:
            row.update({"risk": None, "risk_count": None, "risk_ci95": None, "risk_pairwise": None})
        per_method[m] = row
    others = [m for m in data if m not in (reference, baseline)]
    pairs = [(baseline, m) for m in others] + list(combinations(others, 2))
    comparisons = [compare(a, data[a], b, data[b], per_method, confidence) for a, b in pairs]
    primary = next((c for c in comparisons if c["a"] == baseline and c["b"] == "variance_aware"),
                   comparisons[0] if comparisons else None)
    top_keys = ("f_stat", "f_crit", "f_pvalue", "f_df", "welch_t", "welch_df", "welch_crit", "welch_pvalue",
                "risk_z", "risk_pvalue", "risk_pvalue_greater")
    top = {
        "methods": per_method,
        "primary_comparison": [primary["a"], primary["b"]] if primary else None,
        **{k: (primary.get(k) if primary else None) for k in top_keys},
        "comparisons": comparisons,
        "reference_method": reference, "baseline_method": baseline, "reference_mean": ref_mean,
        "confidence": confidence,
        "conventions": {
            "var": "sample variance, ddof=1",
            "f_test": "F = var_a / var_b, df (n_a-1, n_b-1), f_crit = F_0.95, f_pvalue one-sided (H1: var_a > var_b)",
            "welch": "Welch's t-test, Welch-Satterthwaite df, welch_crit = t_0.975(df), welch_pvalue two-sided",
            "risk": "fraction of the method's policies with reward < mean reward of the reference runs; "
                    "Wilson 95% interval (reference mean treated as known)",
            "risk_pairwise": "P(R_pi < R_ref) over all (policy, reference run) pairs, ties count 1/2",
            "risk_test": "pooled two-proportion z-test; risk_pvalue two-sided, risk_pvalue_greater H1: risk_a > risk_b",
            "eval_noise_var": "mean over the method's policies of reward_se^2 (response-sampling noise of the "
                              "evaluation, samples_per_prompt >= 2); var_excess = var - eval_noise_var",
        },
    }
    # each method's block also at the top level (stats["vanilla"]["var"]), unless its name is a key above
    return {**{m: v for m, v in per_method.items() if m not in top}, **top}


def variance_ratio_table(sweep: Mapping[float | str, Mapping[str, Sequence[float]]], a: str = "vanilla",
                         b: str = "variance_aware", spread: Mapping[float | str, float] | None = None,
                         confidence: float = CONFIDENCE) -> list[dict]:
    """Table 4: one row per heterogeneity scale (how much the reward variances differ across
    samples) with var_a, var_b (ddof=1), their ratio = F, f_crit, one-sided f_pvalue; `spread`
    (e.g. the variance of the per-sample std devs at that scale) is carried into the row."""
    rows = []
    for scale, pop in sweep.items():
        data = _check({m: pop[m] for m in (a, b) if m in pop})
        missing = [m for m in (a, b) if m not in data]
        if missing:
            raise ValueError(f"scale {scale!r}: methods {missing} missing (have {sorted(pop)})")
        row = {"scale": scale, **({"spread": float(spread[scale])} if spread and scale in spread else {}),
               f"var_{a}": float(data[a].var(ddof=1)), f"var_{b}": float(data[b].var(ddof=1)),
               "n_a": int(data[a].size), "n_b": int(data[b].size)}
        f = f_test(data[a], data[b], confidence)
        rows.append({**row, "ratio": f["variance_ratio"], "f_stat": f["f_stat"], "f_crit": f["f_crit"],
                     "f_pvalue": f["f_pvalue"]})
    return rows


# ---------------------------------------------------------------------------------------------
# reading a population folder


def _row(obj, where: str, expect_method: str | None = None, expect_seed: int | None = None) -> dict:
    if not isinstance(obj, dict):
        raise PopulationError(f"{where}: expected a JSON object with method, seed, reward; got {type(obj).__name__}")
    m, s, r = obj.get("method"), obj.get("seed"), obj.get("reward")
    if not isinstance(m, str) or not m:
        raise PopulationError(f"{where}: field 'method' must be a non-empty string, got {m!r}")
    if isinstance(s, bool) or not isinstance(s, int):
        raise PopulationError(f"{where}: field 'seed' must be an integer, got {s!r}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
        raise PopulationError(f"{where}: field 'reward' must be a finite number, got {r!r}")
    if expect_method is not None and m != expect_method:
        raise PopulationError(f"{where}: field 'method' is {m!r} but the file lies under policies/{expect_method}/")
    if expect_seed is not None and s != expect_seed:
        raise PopulationError(f"{where}: field 'seed' is {s} but the file is named seed_{expect_seed}.json")
    se = obj.get("reward_se")
    if se is not None and (isinstance(se, bool) or not isinstance(se, (int, float)) or not math.isfinite(se) or se < 0):
        raise PopulationError(f"{where}: field 'reward_se' must be a finite number ≥ 0 or null, got {se!r}")
    return {"method": m, "seed": s, "reward": float(r), "reward_se": None if se is None else float(se), "source": where}


def read_population(folder: str | Path) -> list[dict]:
    """Rows {method, seed, reward, source} from FOLDER/policies/<method>/seed_<k>.json and/or
    FOLDER/policies.jsonl; a (method, seed) present twice is an error naming both sources."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PopulationError(f"{folder}: population folder not found")
    rows: list[dict] = []
    pol = folder / "policies"
    if pol.is_dir():
        for path in sorted(pol.glob("*/seed_*.json")):
            try:
                seed = int(path.stem.removeprefix("seed_"))
            except ValueError:
                raise PopulationError(f"{path}: expected a file name seed_<integer>.json") from None
            try:
                obj = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise PopulationError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            rows.append(_row(obj, str(path), path.parent.name, seed))
    jl = folder / "policies.jsonl"
    if jl.is_file():
        for n, line in enumerate(jl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PopulationError(f"{jl}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            rows.append(_row(obj, f"{jl}:{n}"))
    if not rows:
        raise PopulationError(f"{folder}: no policy results (expected {folder}/policies/<method>/seed_<k>.json "
                              f"or {folder}/policies.jsonl with rows {{\"method\", \"seed\", \"reward\"}})")
    seen: dict = {}
    for r in rows:
        key = (r["method"], r["seed"])
        if key in seen:
            raise PopulationError(f"{r['source']}: method {key[0]!r} seed {key[1]} also in {seen[key]}")
        seen[key] = r["source"]
    return rows


def evaluation_noise(rows: list[dict]) -> dict[str, float]:
    """{method: mean over its policies of reward_se²}: the part of the method's across-policy
    variance that re-evaluating the same policy would reproduce (response sampling), for the
    methods whose every policy carries a reward_se (evaluation.samples_per_prompt ≥ 2)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r.get("reward_se"))
    return {m: float(np.mean(np.square(v))) for m, v in out.items() if all(x is not None for x in v)}


def group_rewards(rows: list[dict]) -> dict[str, list[float]]:
    """{method: rewards ordered by seed}, methods in order of first appearance."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append((r["seed"], r["reward"]))
    return {m: [x for _, x in sorted(v)] for m, v in out.items()}


# ---------------------------------------------------------------------------------------------
# markdown tables in the layout of the paper's Tables 1–4


def _f(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def stats_markdown(result: dict, model: str = "–", reward_model: str = "–") -> str:
    """Per-method summary, then Tables 1 (variances, F), 2 (means, Welch t) and 3 (risks, z-test),
    one row per comparison, with the paper's Model | Reward Model columns first."""
    m = result["methods"]
    lines = [f"# Population statistics ({model}, {reward_model})", "",
             (f"Per-policy true reward; var with ddof=1; risk = fraction of policies below the reference mean "
              f"({_f(result['reference_mean'])}), Wilson {int(result['confidence'] * 100)}% interval; "
              f"risk_pairwise = P(R_π < R_ref) over all pairs."), "",
             "| Method | n | Mean | Variance | Std | Risk | Risk CI | Risk (pairwise) | Eval-noise var | Var − noise |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in m.items():
        ci = "–" if r["risk_ci95"] is None else f"[{r['risk_ci95'][0]:.3f}, {r['risk_ci95'][1]:.3f}]"
        lines.append(f"| {name} | {r['n']} | {_f(r['mean'])} | {_f(r['var'])} | {_f(r['std'])} | "
                     f"{_f(r['risk'], 3)} | {ci} | {_f(r['risk_pairwise'], 3)} | {_f(r.get('eval_noise_var'))} | "
                     f"{_f(r.get('var_excess'))} |")
    if any(r.get("eval_noise_var") is not None for r in m.values()):
        lines += ["", "Eval-noise var: mean over the method's policies of their squared evaluation standard error "
                  "(within-prompt sampling noise); it is in every method's variance alike and lowers the F-score."]
    cmp = result["comparisons"]
    lines += ["", "## Table 1: variances (F-test, one-sided H1: var(a) > var(b))", "",
              "| Model | Reward Model | a | b | Var(a) | Var(b) | F-score | F crit (0.95; df) | p-value |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cmp:
        lines.append(f"| {model} | {reward_model} | {c['a']} | {c['b']} | {_f(m[c['a']]['var'])} | {_f(m[c['b']]['var'])} | "
                     f"{_f(c['f_stat'], 3)} | {_f(c['f_crit'], 3)} ({c['f_df'][0]}, {c['f_df'][1]}) | {_f(c['f_pvalue'], 3)} |")
    lines += ["", "## Table 2: means (Welch's t-test, two-sided)", "",
              "| Model | Reward Model | a | b | Mean(a) | Mean(b) | t-score | t crit (0.975; df) | p-value |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cmp:
        lines.append(f"| {model} | {reward_model} | {c['a']} | {c['b']} | {_f(m[c['a']]['mean'])} | {_f(m[c['b']]['mean'])} | "
                     f"{_f(c['welch_t'], 3)} | {_f(c['welch_crit'], 3)} ({_f(c['welch_df'], 4)}) | {_f(c['welch_pvalue'], 3)} |")
    if result["reference_mean"] is not None:
        lines += ["", "## Table 3: risk P(R(π) < R(π_ref)) (two-proportion z-test)", "",
                  "| Model | Reward Model | a | b | Risk(b) | Risk(a) | z | p (two-sided) | p (H1: risk(a) > risk(b)) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in cmp:
            lines.append(f"| {model} | {reward_model} | {c['a']} | {c['b']} | {_f(c['risk_b'], 3)} | {_f(c['risk_a'], 3)} | "
                         f"{_f(c['risk_z'], 3)} | {_f(c['risk_pvalue'], 3)} | {_f(c['risk_pvalue_greater'], 3)} |")
    return "\n".join(lines) + "\n"


def variance_ratio_markdown(rows: list[dict], a: str = "vanilla", b: str = "variance_aware",
                            spread_label: str = "Spread of σ") -> str:
    """Table 4: heterogeneity scale | spread | Var(a) | Var(b) | ratio | F crit | p."""
    lines = [f"| Scale | {spread_label} | Var({a}) | Var({b}) | Ratio | F crit (0.95) | p-value |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']} | {_f(r.get('spread'))} | {_f(r[f'var_{a}'])} | {_f(r[f'var_{b}'])} | "
                     f"{_f(r['ratio'], 3)} | {_f(r['f_crit'], 3)} | {_f(r['f_pvalue'], 3)} |")
    return "\n".join(lines) + "\n"
