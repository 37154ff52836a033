"""What a population shows, in words: the quickstart's closing lines. Built from `compute_stats`'
output so that the printed sentence and stats.json can never disagree."""
from __future__ import annotations


def population_table(stats: dict, rows: list[dict], reference: str = "reference") -> list[dict]:
    """One row per method: policies, mean gold (± sd over policies), KL(π‖π_ref) per sequence on the
    evaluation samples, run-aways and policies below the reference (k of n)."""
    out = []
    for m, s in stats["methods"].items():
        kl = [r["kl"] for r in rows if r["method"] == m and r.get("kl") is not None]
        out.append({"method": m, "policies": s["n"], "gold": f"{s['mean']:.3f} ± {s['std']:.3f}",
                    "KL": f"{sum(kl) / len(kl):.2f}" if kl else "–",
                    "run-aways": "–" if m == reference or s["runaway_count"] is None else f"{s['runaway_count']}/{s['n']}",
                    "below reference": "–" if m == reference or s["risk_count"] is None else f"{s['risk_count']}/{s['n']}"})
    return out


def verdict(stats: dict, alpha: float = 0.05) -> list[str]:
    """Sentences: the declared primary test(s) with sidedness, n and p, and what they mean here —
    including "no difference here" when no declared test rejects."""
    pt = stats.get("primary_test")
    if not pt:
        return ["No comparison: the population has one policy method."]
    a, b = pt["comparison"]
    ma, mb = stats["methods"][a], stats["methods"][b]
    lines = []
    for r in pt["results"]:
        p = r.get("holm_pvalue", r["pvalue"])
        shown = "unavailable (" + r["unavailable"] + ")" if r["pvalue"] is None else f"p = {p:.3g}"
        lines.append(f"primary test {r['test']} ({r['alternative']}), n = {r['n'][0]}/{r['n'][1]}: {shown}")
    significant = any((r.get("holm_pvalue", r["pvalue"]) or 1.0) < alpha for r in pt["results"])
    effect = (f"{a}: mean gold {ma['mean']:.3f}, variance {ma['var']:.3g}, below the reference {ma['risk_count']}/{ma['n']}"
              f"; {b}: {mb['mean']:.3f}, {mb['var']:.3g}, {mb['risk_count']}/{mb['n']}"
              if ma.get("risk_count") is not None else
              f"{a}: mean gold {ma['mean']:.3f}, variance {ma['var']:.3g}; {b}: {mb['mean']:.3f}, variance {mb['var']:.3g}")
    if significant:
        lines.append(f"{b} is less variable / less risky than {a} here at α = {alpha} ({effect}).")
    else:
        lines.append(f"No difference here: no declared test rejects at α = {alpha} ({effect}).")
        powers = (stats.get("power") or {}).get("per_test") or {}
        need = [f"{t}: {powers[t]['n_for_power_0.8'] or '> 2000'}" for t in pt["declared"] if t in powers]
        if need:
            lines.append("Seeds per method for power 0.8 if the methods differed as observed: " + ", ".join(need) + ".")
    return lines
