"""A check of the paper's claims (Sections 3.2 and 5.2-5.4) against this run's metrics.

Each claim gets the numbers that test it and a verdict by a fixed rule: "holds",
"does not hold", "mixed", or "not testable" (with why) when this run lacks the data.

Several seeds (`check_seed_claims`): each verdict is computed on the mean run (every accuracy
averaged over seeds, `weaving.report.seeds.mean_run`), and a gain (a method's, a setup's excess
over MTL's, A* over A, a variant's over the baseline) counts only when its 95% t-interval over
seeds excludes zero (`counts_as_gain`); with one seed its point estimate decides, as before.
Every claim states the seeds it was computed on and in how many of them it holds on its own
(`seeds`, `seeds_holding`).
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any

from weaving.report.load import RunMetrics, WeaveMetrics
from weaving.report.seeds import counts_as_gain, mean_run, named, seed_stats
from weaving.report.tables import SETUP_SHORT, method_label

HOLDS, FAILS, MIXED, UNTESTABLE = "holds", "does not hold", "mixed", "not testable"

SIMILAR_POOLING_PP = 1.0
"""avg and random pooling are "similar" when their averages differ by at most this (percentage points)."""
MAGMAX_WORSE_PP = 2.0
"""MagMax pooling is "clearly worse" when its average is at least this far below avg pooling's."""
SPREAD_THRESHOLD = 0.5
"""Normalised entropy of the best-lam distribution at or above which it counts as spread out."""


@dataclass
class Claim:
    id: str
    section: str
    statement: str
    rule: str
    verdict: str
    evidence: str
    numbers: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    seeds: list[int] = field(default_factory=list)
    """The seeds the verdict was computed on (their mean run)."""
    seeds_holding: int | None = None
    """In how many of `seeds` the claim holds on its own (its check on that seed's run alone); None
    when not testable or not computed."""

    def seeds_note(self) -> str:
        """"holds in 2 of 3 seeds" (empty for one seed or when not counted)."""
        if len(self.seeds) < 2 or self.seeds_holding is None:
            return ""
        return f"holds in {self.seeds_holding} of {len(self.seeds)} seeds"


GAIN_RULE = ("With several seeds the verdict is computed on the means over seeds, and a gain counts only when its "
             "95% t-interval over seeds excludes zero (low > 0.00); with one seed its value (to 2 decimals) > 0 decides.")


def _gain_spread(per_seed: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per key of the per-seed dicts: the std and 95% interval over seeds (for a claim's numbers)."""
    out = {}
    for key in per_seed[0]:
        stats = seed_stats([d[key] for d in per_seed])
        out[key] = {"std": stats.std, "ci": stats.ci}
    return out


def _with_ci(value: float, per_seed: list[float] | None) -> str:
    """"+1.33" (one seed) or "+1.33 [-3.84, +6.51]" (its 95% interval over several seeds)."""
    stats = seed_stats(per_seed) if per_seed and len(per_seed) > 1 else None
    return _pp(value) if stats is None else f"{_pp(value)} [{_pp(stats.low)}, {_pp(stats.high)}]"


def _is_gain(mean: float, per_seed: list[float] | None) -> bool:
    """The gain rule (`GAIN_RULE`): the interval over seeds with several seeds, the point estimate otherwise."""
    if per_seed is None or len(per_seed) < 2:
        return round(mean, 2) > 0
    return counts_as_gain(per_seed)


def _majority(successes: int, total: int) -> str:
    if 2 * successes > total:
        return HOLDS
    if 2 * successes < total:
        return FAILS
    return MIXED


def _combine(parts: list[str]) -> str:
    """Verdict of a claim made of parts: all hold -> holds, none -> does not hold, else mixed."""
    tested = [p for p in parts if p != UNTESTABLE]
    if not tested:
        return UNTESTABLE
    if all(p == HOLDS for p in tested):
        return HOLDS
    if all(p == FAILS for p in tested):
        return FAILS
    return MIXED


def _records(run: RunMetrics, method: str, setups: list[str] | None = None) -> list[WeaveMetrics]:
    return [run.get(m, s, method) for s in (setups or run.setups) for m in run.models]


def _pp(x: float) -> str:
    return f"{x:+.2f}"


def method_gains(run: RunMetrics) -> dict[str, float]:
    """Per method: mean over setups and models of (Weight Weaving avg over A*) - (baseline), in points."""
    return {m: fmean(r.weaving_avg("avg", "all") - r.baseline_avg for r in _records(run, m)) for m in run.methods}


def claim_beats_baseline(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Claim:
    gains = method_gains(run)
    per_seed = [method_gains(r) for r in seed_runs]
    wins = sum(1 for m, g in gains.items() if _is_gain(g, [p[m] for p in per_seed] if per_seed else None))
    numbers: dict[str, Any] = {"gain_pp": gains, "methods_gaining": wins, "methods": len(gains)}
    if len(per_seed) > 1:
        numbers["gain_pp_over_seeds"] = _gain_spread(per_seed)
    return Claim(
        id="beats_baseline", section="5.2",
        statement="Weight Weaving beats the data-free baseline (λ = 1) on average for most merging methods.",
        rule="Per method, the gain is the mean over setups and models of Weight Weaving (avg over A*) minus the "
             "baseline. Holds when more than half of the methods gain (> 0.00 points), does not hold when fewer "
             "than half do, mixed at exactly half. " + GAIN_RULE,
        verdict=_majority(wins, len(gains)),
        evidence=f"{wins}/{len(gains)} methods gain{' (interval over seeds above 0)' if len(per_seed) > 1 else ''}; "
                 + ", ".join(f"{method_label(m)} {_with_ci(g, [p[m] for p in per_seed])}" for m, g in gains.items()),
        numbers=numbers,
        paper="6/6 methods gain on Avg, +0.69 (PCB) to +15.94 (Breadcrumbs) points (Table 2).",
    )


def setup_gains(run: RunMetrics) -> dict[str, float]:
    """Per setup: mean over methods and models of (Weight Weaving avg over A*) - (baseline)."""
    return {s: fmean(run.get(mo, s, me).weaving_avg("avg", "all") - run.get(mo, s, me).baseline_avg
                     for me in run.methods for mo in run.models) for s in run.setups}


def claim_gains_by_setup(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Claim:
    statement = "The gains are largest in continual learning and domain generalisation, smaller in multi-task learning."
    rule = ("Per setup, the mean over methods and models of Weight Weaving (avg over A*) minus the baseline. Holds "
            "when every run setup among CL and DG gains more than MTL, does not hold when none does, mixed otherwise. "
            "A setup's excess over MTL counts as a gain by the gain rule. " + GAIN_RULE)
    paper = ("Table 2: mean gain MTL −0.29, CL +10.32, DG +5.65 points; Weight Weaving wins 5/18 MTL, 17/18 CL "
             "and 17/18 DG cells.")
    others = [s for s in ("cl", "dg") if s in run.setups]
    if "mtl" not in run.setups or not others:
        missing = "mtl" if "mtl" not in run.setups else "cl and dg"
        return Claim("gains_by_setup", "5.2", statement, rule, UNTESTABLE,
                     f"not testable: setup(s) {missing} not run", paper=paper)
    gains = setup_gains(run)
    per_seed = [setup_gains(r) for r in seed_runs]
    if len(per_seed) > 1:
        larger = sum(1 for s in others if counts_as_gain([p[s] - p["mtl"] for p in per_seed]))
    else:
        larger = sum(1 for s in others if round(gains[s], 2) > round(gains["mtl"], 2))
    verdict = HOLDS if larger == len(others) else FAILS if larger == 0 else MIXED
    numbers: dict[str, Any] = {"gain_pp": gains}
    if len(per_seed) > 1:
        numbers["gain_pp_over_seeds"] = _gain_spread(per_seed)
        numbers["excess_over_mtl_pp_over_seeds"] = _gain_spread([{s: p[s] - p["mtl"] for s in others}
                                                                 for p in per_seed])
    evidence = "mean gain per setup: " + ", ".join(f"{SETUP_SHORT[s]} {_pp(g)}" for s, g in gains.items())
    if len(per_seed) > 1:
        evidence += "; excess over MTL (95% interval over seeds): " + ", ".join(
            f"{SETUP_SHORT[s]} {_with_ci(gains[s] - gains['mtl'], [p[s] - p['mtl'] for p in per_seed])}"
            for s in others)
    return Claim("gains_by_setup", "5.2", statement, rule, verdict, evidence,
                 numbers=numbers, paper=paper)


def pooling_averages(run: RunMetrics, pool_over: str = "all") -> dict[str, dict[str, float]]:
    """Per method and pooling: mean over setups and models of Weight Weaving's task average."""
    return {m: {p: fmean(r.weaving_avg(p, pool_over) for r in _records(run, m)) for p in run.poolings}
            for m in run.methods}


def claim_poolings(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Claim:
    statement = "Average and random pooling give similar results, while MagMax pooling is clearly worse."
    rule = (f"Pooling over A*, per method averaged over setups and models. Part (a): |avg − random| ≤ "
            f"{SIMILAR_POOLING_PP:.1f} points. Part (b): avg − magmax ≥ {MAGMAX_WORSE_PP:.1f} points. A part holds "
            f"when it holds for more than half of the methods (does not hold below half, mixed at half). Holds "
            f"when both parts hold, does not hold when neither does, mixed otherwise; a part whose pooling was "
            f"not run is not testable. With several seeds, on the means over seeds.")
    paper = "Table 3: |avg − random| ≤ 0.37; magmax 9.4 to 21.7 points below avg."
    averages = pooling_averages(run)
    parts, evidence, numbers = [], [], {"averages": averages}
    if "random" in run.poolings:
        diffs = {m: v["avg"] - v["random"] for m, v in averages.items()}
        ok = sum(1 for d in diffs.values() if abs(d) <= SIMILAR_POOLING_PP)
        parts.append(_majority(ok, len(diffs)))
        evidence.append(f"(a) avg − random within ±{SIMILAR_POOLING_PP:.1f} for {ok}/{len(diffs)}: "
                        + ", ".join(f"{method_label(m)} {_pp(d)}" for m, d in diffs.items()))
        numbers["avg_minus_random_pp"] = diffs
    else:
        parts.append(UNTESTABLE)
        evidence.append("(a) not testable: pooling 'random' not run")
    if "magmax" in run.poolings:
        drops = {m: v["avg"] - v["magmax"] for m, v in averages.items()}
        ok = sum(1 for d in drops.values() if d >= MAGMAX_WORSE_PP)
        parts.append(_majority(ok, len(drops)))
        evidence.append(f"(b) magmax ≥ {MAGMAX_WORSE_PP:.1f} below avg for {ok}/{len(drops)}: "
                        + ", ".join(f"{method_label(m)} {_pp(-d)}" for m, d in drops.items()))
        numbers["avg_minus_magmax_pp"] = drops
    else:
        parts.append(UNTESTABLE)
        evidence.append("(b) not testable: pooling 'magmax' not run")
    numbers["parts"] = parts
    return Claim("poolings", "5.3", statement, rule, _combine(parts), "; ".join(evidence), numbers, paper)


def best_lambda_spread(record: WeaveMetrics) -> dict[str, float] | None:
    """Spread of the per-task best lam: normalised entropy and normalised IQR; None with fewer than 2 tasks.

    Entropy of the distribution of best lam over the search space, divided by log(min(tasks, |search space|))
    (1 = every task a different lam, 0 = all the same). IQR of the best lams divided by the search space's range.
    """
    best = list(record.best_lambda_per_task().values())
    cap = min(len(best), len(set(record.lambdas)))
    if len(best) < 2 or cap < 2:
        return None
    counts = Counter(best)
    entropy = -sum(c / len(best) * math.log(c / len(best)) for c in counts.values())
    ordered = sorted(best)
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    width = max(record.lambdas) - min(record.lambdas)
    return {"entropy": entropy / math.log(cap), "iqr": (q3 - q1) / width if width > 0 else 0.0}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def claim_best_lambda_spread(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Claim:
    statement = ("The best λ per task is spread out across the search space in continual learning and domain "
                 "generalisation, and concentrated (around λ = 1) for ISO-C in multi-task learning.")
    rule = (f"Spread of a (model, setup, method): normalised entropy of its tasks' best λ (ties to the first λ), "
            f"1 = all different, 0 = all equal; it needs at least 2 tasks. Part (a): for each of CL and DG that was "
            f"run, the mean spread over methods and models is ≥ {SPREAD_THRESHOLD}. Part (b): ISO-C's mean spread "
            f"in MTL over models is < {SPREAD_THRESHOLD}. Holds when both parts hold, does not hold when neither "
            f"does, mixed otherwise; a part without its data is not testable. With several seeds, the best λ of "
            f"each task's accuracy curve averaged over seeds.")
    paper = "Figure 2 (ViT-B-32, MagMax and ISO-C): scattered in CL and DG, ISO-C concentrated at λ = 1 in MTL."
    spreads = {(mo, s, me): best_lambda_spread(r) for (mo, s, me), r in run.weave.items()}
    numbers: dict[str, Any] = {"entropy": {f"{mo}/{s}/{me}": v["entropy"] for (mo, s, me), v in spreads.items() if v},
                               "iqr": {f"{mo}/{s}/{me}": v["iqr"] for (mo, s, me), v in spreads.items() if v}}
    parts, evidence = [], []
    means = {}
    for setup in ("cl", "dg"):
        values = [v["entropy"] for (mo, s, me), v in spreads.items() if s == setup and v]
        if values:
            means[setup] = fmean(values)
    if means:
        spread_ok = all(v >= SPREAD_THRESHOLD for v in means.values())
        none_ok = all(v < SPREAD_THRESHOLD for v in means.values())
        parts.append(HOLDS if spread_ok else FAILS if none_ok else MIXED)
        evidence.append("(a) mean spread " + ", ".join(f"{SETUP_SHORT[s]} {v:.2f}" for s, v in means.items()))
    else:
        parts.append(UNTESTABLE)
        evidence.append("(a) not testable: no CL or DG setup with at least 2 tasks was run")
    iso = [v["entropy"] for (mo, s, me), v in spreads.items() if s == "mtl" and me == "iso_c" and v]
    if iso:
        parts.append(HOLDS if fmean(iso) < SPREAD_THRESHOLD else FAILS)
        evidence.append(f"(b) ISO-C MTL spread {fmean(iso):.2f}")
        mtl_others = [v["entropy"] for (mo, s, me), v in spreads.items() if s == "mtl" and me != "iso_c" and v]
        if mtl_others:
            evidence[-1] += f" (other methods in MTL: {fmean(mtl_others):.2f})"
    else:
        why = "iso_c not run" if "iso_c" not in run.methods else "mtl not run" if "mtl" not in run.setups \
            else "fewer than 2 MTL tasks"
        parts.append(UNTESTABLE)
        evidence.append(f"(b) not testable: {why}")
    numbers["mean_spread"] = means
    numbers["iso_c_mtl_spread"] = fmean(iso) if iso else None
    numbers["parts"] = parts
    return Claim("best_lambda_spread", "5.4", statement, rule, _combine(parts), "; ".join(evidence), numbers, paper)


def pool_over_diffs(run: RunMetrics) -> dict[str, float]:
    """Per method: mean over setups and models of Weight Weaving avg over A* minus avg over A."""
    return {m: fmean(r.weaving_avg("avg", "all") - r.weaving_avg("avg", "augmented") for r in _records(run, m))
            for m in run.methods}


def claim_pool_over(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Claim:
    statement = "Pooling over A* (task vectors and merges) works better than over A (the λ-scaled merges only)."
    rule = ("Per method, mean over setups and models of Weight Weaving avg over A* minus avg over A. Holds when "
            "more than half of the methods are better over A*, does not hold below half, mixed at half. Being "
            "better over A* counts as a gain by the gain rule. " + GAIN_RULE)
    paper = "Section 3.2: \"incorporating a broader set of parameters offers benefits\" (no table)."
    if "augmented" not in run.pool_overs:
        return Claim("pool_over", "3.2", statement, rule, UNTESTABLE, "not testable: pool_over 'augmented' not run",
                     paper=paper)
    diffs = pool_over_diffs(run)
    per_seed = [pool_over_diffs(r) for r in seed_runs]
    wins = sum(1 for m, d in diffs.items() if _is_gain(d, [p[m] for p in per_seed] if per_seed else None))
    numbers: dict[str, Any] = {"all_minus_augmented_pp": diffs}
    if len(per_seed) > 1:
        numbers["all_minus_augmented_pp_over_seeds"] = _gain_spread(per_seed)
    return Claim("pool_over", "3.2", statement, rule, _majority(wins, len(diffs)),
                 f"A* better for {wins}/{len(diffs)}{' (interval over seeds above 0)' if len(per_seed) > 1 else ''}: "
                 + ", ".join(f"{method_label(m)} {_with_ci(d, [p[m] for p in per_seed])}" for m, d in diffs.items()),
                 numbers=numbers, paper=paper)


def check_claims(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> list[Claim]:
    """The paper's claims on `run`; `seed_runs` (each seed's run, when `run` is their mean) decide
    by the gain rule which gains count (`GAIN_RULE`). `seeds`/`seeds_holding` are left unset."""
    from weaving.report.beyond import claim_beyond_lam

    checks = (claim_beats_baseline, claim_gains_by_setup, claim_poolings, claim_best_lambda_spread,
              claim_pool_over, claim_beyond_lam)
    return [check(run, seed_runs) for check in checks]


def _holding(verdict: str) -> int | None:
    return None if verdict == UNTESTABLE else int(verdict == HOLDS)


def check_seed_claims(runs: Mapping[int, RunMetrics]) -> list[Claim]:
    """The paper's claims over one run per seed (`runs`: seed -> run, in order).

    One seed: `check_claims(run)` with `seeds` = [seed] and `seeds_holding` 1 when it holds, 0
    when not (None when not testable). Several: each verdict on the mean run with the gain rule
    over seeds (`GAIN_RULE`); `seeds_holding` = the seeds whose run alone makes the claim hold.
    """
    seeds = list(runs)
    if len(seeds) == 1:
        claims = check_claims(runs[seeds[0]])
        for claim in claims:
            claim.seeds = named(seeds)
            claim.seeds_holding = _holding(claim.verdict)
        return claims
    seed_runs = [runs[s] for s in seeds]
    claims = check_claims(mean_run(runs), seed_runs)
    alone = [{c.id: c.verdict for c in check_claims(r)} for r in seed_runs]
    for claim in claims:
        claim.seeds = seeds
        claim.seeds_holding = None if claim.verdict == UNTESTABLE else sum(a[claim.id] == HOLDS for a in alone)
    return claims


def section_claims(claims: list[Claim], seeds: Sequence[int]) -> list[Claim]:
    """The claims of a family's section (built from the first seed only): `seeds` = [first seed],
    `seeds_holding` from their own verdict (1, 0, or None when not testable), unless already set."""
    for claim in claims:
        if not claim.seeds:
            claim.seeds = named(seeds[:1])
            claim.seeds_holding = _holding(claim.verdict)
    return claims


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def claims_json(claims: list[Claim]) -> str:
    return json.dumps({"claims": [_rounded(asdict(c)) for c in claims]}, indent=2, ensure_ascii=False) + "\n"


INTRO = ("Each claim of the paper is tested on this run's metrics by the rule stated under it. Verdicts: "
         "**holds**, **does not hold**, **mixed** (parts disagree or a tie), **not testable** (this run lacks the "
         "data). Gains are in percentage points of accuracy; Weight Weaving is pooling 'avg' over A* unless said.")


def claims_markdown(claims: list[Claim]) -> str:
    lines = ["# The paper's claims, checked on this run", "", _intro(claims), "",
             "| Claim | Section | Verdict | This run |", "| --- | --- | --- | --- |"]
    for c in claims:
        lines.append(f"| {c.statement} | {c.section} | **{c.verdict}**{_note(c, ' (', ')')} | "
                     f"{c.evidence.replace('|', '/')} |")
    for c in claims:
        lines += ["", f"## {c.statement}", "", f"- Section: {c.section}", f"- Rule: {c.rule}",
                  f"- This run: {c.evidence}", f"- Paper: {c.paper}", f"- Verdict: **{c.verdict}**"]
        if len(c.seeds) > 1:
            lines.append(f"- Seeds: {', '.join(map(str, c.seeds))}; "
                         + (c.seeds_note() if c.seeds_holding is not None else "not counted per seed"))
        elif len(c.seeds) == 1 and any(len(o.seeds) > 1 for o in claims):
            lines.append(f"- Seeds: {c.seeds[0]} only")
    return "\n".join(lines) + "\n"


def _note(claim: Claim, before: str, after: str) -> str:
    note = claim.seeds_note()
    return f"{before}{note}{after}" if note else ""


NOTE_OPEN = '<br><span class="note">'


def _intro(claims: list[Claim]) -> str:
    seeds = max((c.seeds for c in claims), key=len, default=[])
    if len(seeds) < 2:
        return INTRO
    return (f"{INTRO} Seeds: {', '.join(map(str, seeds))}; beside each verdict stands in how many seeds the claim "
            f"holds on its own (checked on that seed's run alone). {GAIN_RULE}")


def claims_html(claims: list[Claim]) -> str:
    rows = "".join(f"<tr><td>{html.escape(c.statement)}</td><td>{c.section}</td>"
                   f"<td class=\"verdict {c.verdict.replace(' ', '-')}\">{html.escape(c.verdict)}"
                   f"{_note(c, NOTE_OPEN, '</span>')}</td>"
                   f"<td>{html.escape(c.evidence)}<br><span class=\"note\">Rule: {html.escape(c.rule)}</span><br>"
                   f"<span class=\"note\">Paper: {html.escape(c.paper)}</span></td></tr>" for c in claims)
    return (f"<p>{html.escape(_intro(claims).replace('**', ''))}</p><table><thead><tr><th>Claim</th><th>Section</th>"
            f"<th>Verdict</th><th>This run</th></tr></thead><tbody>{rows}</tbody></table>\n")
