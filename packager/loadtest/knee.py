"""The capacity at the SLO (the knee): the highest load at which a server still meets the SLOs, found after a sweep
by bisection between the sweep's last step that met them and its first that did not.

A sweep of 1, 4 and 16 users says only that the capacity lies somewhere between two steps; pricing the lower step
undersells the variant by up to 4x. `search_knee` narrows that bracket with short single-load runs (probes), each
judged exactly as a sweep step is (the SLO attainment target over every request sent), until the bracket is within
`KneeSearch.precision` of the knee (and at least one user wide for concurrency), or the probe budget is spent.
When every sweep step met the SLOs, the load is doubled first (up to `extend_factor` x the highest step), so the
bracket has an upper end.

Where to probe (`KneeSearch.guided`, the default): every load carries its SLO ratio (how near the SLO its request at
the attainment target's rank ran, at most 1 when it meets them; PhaseResult.slo_ratio_at_target). The two ends of
the bracket straddle 1, and interpolating the ratio in the load says where it crosses 1: the knee's estimate.
Closed loop (users), linearly: once a server is saturated, N users wait N / throughput, so latency grows about
linearly in N (measured on vLLM CPU: the ratio went 0.39, 0.73, 0.96, 1.06, 1.34 at 16, 32, 36, 40, 48 users).
Open loop (requests/s), in its logarithm: queueing delay grows without bound as the rate nears capacity. A probe
goes to the estimate, but no nearer either end than the precision (one user at least), so a good estimate closes
the bracket in two probes: one at the estimate, one a precision step beyond it on the other side. When the
estimate is off, the same end of the bracket keeps moving in small steps; after two guided probes in a row on the
same side of the knee the rest of the search bisects, so a misleading ratio costs at most two probes more than
bisection. Without ratios (older results) or with `guided: false` every probe is the midpoint. Measured against
bisection on the same server: benchmarks/results/knee_guided.json.

The search assumes that meeting the SLOs is monotone in the load (more load never makes latency better); a probe
that contradicts it is kept in the record and the bracket follows the newest measurement.

`search_knee` is pure (a `probe(load) -> PhaseResult` callable does the measuring): the runner's `add_knee`
passes one that runs a real load test per probe under the sweep's directory.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from packager.loadtest.config import KneeSearch, LoadTestConfig
from packager.loadtest.metrics import load_value
from packager.loadtest.pricing import usd_per_million_tokens
from packager.loadtest.result import KneeProbe, KneeResult, LoadTestResult, PhaseResult

ProbeFn = Callable[[float], tuple[PhaseResult, str | None]]


def as_probe(ph: PhaseResult, source: str, run_dir: str | None = None) -> KneeProbe:
    return KneeProbe(load=load_value(ph), source=source, meets_slo=ph.meets_slo,
                     slo_attainment_fraction=ph.slo_attainment_fraction,
                     output_tokens_per_s=ph.output_token_throughput_per_s,
                     goodput_output_tokens_per_s=ph.goodput_output_tokens_per_s, ttft_ms_p95=ph.ttft.p95_ms,
                     tpot_ms_p50=ph.tpot.p50_ms, run_dir=run_dir, slo_ratio_at_target=ph.slo_ratio_at_target)


def bracket(probes: list[KneeProbe]) -> tuple[float | None, float | None]:
    """(highest load meeting the SLOs, lowest load above it missing them); None where there is none."""
    ok = [p.load for p in probes if p.meets_slo]
    lo = max(ok) if ok else None
    above = [p.load for p in probes if not p.meets_slo and (lo is None or p.load > lo)]
    return lo, (min(above) if above else None)


def estimate_knee(probes: list[KneeProbe], lo: float | None, hi: float | None, log: bool = False) -> float | None:
    """Where the SLO ratio crosses 1 between the bracket's ends (the newest measurement at each), interpolated
    linearly in the ratio or (`log`) in its logarithm; None without two ends whose ratios straddle 1."""
    if lo is None or hi is None or hi <= lo:
        return None
    r_lo = next((p.slo_ratio_at_target for p in reversed(probes) if p.load == lo), None)
    r_hi = next((p.slo_ratio_at_target for p in reversed(probes) if p.load == hi), None)
    if r_lo is None or r_hi is None or not 0 < r_lo <= 1 < r_hi:
        return None
    if log:
        return lo + (hi - lo) * -math.log(r_lo) / (math.log(r_hi) - math.log(r_lo))
    return lo + (hi - lo) * (1.0 - r_lo) / (r_hi - r_lo)


def next_load(lo: float | None, hi: float | None, integer: bool, precision: float, ceiling: float,
              estimate: float | None = None) -> float | None:
    """The next load to probe, or None when the bracket is narrow enough (or cannot be narrowed). Above every load
    that met the SLOs (none missed them) the load doubles, up to `ceiling`. Inside the bracket: the midpoint, or
    with an `estimate` of the knee that estimate, kept at least the precision away from either end."""
    if hi is None:  # nothing failed: look above the highest load that met the SLOs
        if not lo:
            return None
        up = min(lo * 2.0, ceiling)
        up = float(math.floor(up)) if integer else up
        return up if up > lo else None
    low = lo or 0.0
    width = hi - low
    if integer:
        step = max(1.0, precision * low)
        if width <= step:
            return None
        mid = float(math.floor((low + hi) / 2))
        guess = _inside(estimate, low, hi, step, integer=True)
        return guess if guess is not None else (mid if low < mid < hi and mid >= 1 else None)
    if lo is not None and width <= precision * lo:
        return None
    if lo is None and hi <= 1e-3:
        return None
    guess = _inside(estimate, low, hi, precision * low, integer=False) if lo is not None else None
    return guess if guess is not None else (low + hi) / 2.0


def _inside(estimate: float | None, low: float, hi: float, step: float, integer: bool) -> float | None:
    """The estimate moved at least `step` in from either end of the bracket (a probe at the end itself would tell
    nothing new), rounded to whole users; None when it is not strictly inside."""
    if estimate is None:
        return None
    c = min(max(estimate, low + step), hi - step)
    if integer:
        c = float(round(c))
    return c if low < c < hi else None


def search_knee(mode: str, sweep_phases: list[PhaseResult], probe: ProbeFn, cfg: KneeSearch, probe_s: float,
                usd_per_hour: float | None, utilisation: float = 1.0,
                log: Callable[[str], None] = lambda m: None) -> KneeResult:
    """Bisect between the sweep's steps with `probe` until the knee is known within `cfg.precision`."""
    integer = mode == "concurrency"
    probes = [as_probe(p, "sweep") for p in sweep_phases]
    phases: dict[float, PhaseResult] = {load_value(p): p for p in sweep_phases}
    allowed = min(cfg.max_probes, int(cfg.budget_s // probe_s + 1e-9))
    ceiling = max((p.load for p in probes), default=0.0) * cfg.extend_factor
    ran = 0
    stopped = "the bracket is within the precision"
    sides: list[bool] = []  # meets_slo of each guided probe
    while True:
        lo, hi = bracket(probes)
        # two guided probes in a row on one side of the knee: the ratio misleads here (a cliff, say); bisect on
        one_sided = len(sides) >= 2 and sides[-1] == sides[-2]
        est = estimate_knee(probes, lo, hi, log=not integer) if cfg.guided and not one_sided else None
        load = next_load(lo, hi, integer, cfg.precision, ceiling, est)
        if load is None:
            if hi is None:
                stopped = f"no load missed the SLOs, up to {ceiling:g} (extend_factor {cfg.extend_factor:g})"
            elif lo is None and hi is not None and (integer and hi <= 1):
                stopped = "the lowest load (1 user) missed the SLOs"
            break
        if ran >= allowed:
            stopped = (f"the probe budget was spent ({ran} probe(s) of {probe_s:g} s; budget_s={cfg.budget_s:g}, "
                       f"max_probes={cfg.max_probes})")
            break
        log(f"capacity search: probing {load:g} {'users' if integer else 'requests/s'} "
            f"(bracket {lo if lo is not None else 0:g} .. {hi if hi is not None else 'none'}"
            + (f", knee estimated at {est:.3g})" if est is not None else ")"))
        ph, run_dir = probe(load)
        ran += 1
        if est is not None:
            sides.append(ph.meets_slo)
        phases[load] = ph
        probes.append(as_probe(ph, "probe", run_dir))
        if ph.requests_sent == 0 and ph.requests_warmup_excluded:
            log(f"capacity search: {load:g} missed the SLOs: no request started after the warm-up within the probe "
                "(its first wave outlasted it)")
        else:
            log(f"capacity search: {load:g} {'met' if ph.meets_slo else 'missed'} the SLOs "
                f"({ph.slo_attainment_fraction:.0%} of requests within them, {ph.output_token_throughput_per_s:.1f} "
                "output tok/s)")
    lo, hi = bracket(probes)
    resolved = hi is not None and next_load(lo, hi, integer, cfg.precision, ceiling) is None
    tps = phases[lo].output_token_throughput_per_s if lo is not None else None
    cost = (usd_per_million_tokens(usd_per_hour, tps, utilisation)
            if usd_per_hour is not None and tps else None)
    return KneeResult(mode=mode, knee=lo, first_failing=hi, precision=cfg.precision, resolved=resolved,
                      stopped_because=stopped, probes=probes, output_tokens_per_s_at_knee=tps,
                      usd_per_hour=usd_per_hour, usd_per_million_output_tokens_at_knee=cost,
                      dispatch_s=ran * probe_s)


def replicas_needed(expected_load: float, per_replica: float) -> int:
    """Replicas that carry `expected_load` when each carries `per_replica` (> 0) of it: the ceiling, at least one
    (a load a hair above a whole multiple, from float arithmetic, does not buy one more)."""
    return max(1, math.ceil(expected_load / per_replica - 1e-9))


def probe_config(cfg: LoadTestConfig, load: float, probe_s: float, prompt_format: str | None = None,
                 index: int = 1, pool_offset: int = 0) -> LoadTestConfig:
    """A single-load run like one step of the sweep: the same prompt source, bounds and SLO target, the prompt
    format the sweep found (a probe does not ask the server again), and prompts the server has not answered yet:
    another seed (synthetic prompts are drawn anew) and the pool read from `pool_offset` on. A probe that replayed
    the sweep's first prompts would find them in the server's prompt or prefix cache (llama-server and vLLM keep
    one) and measure a faster server than the sweep did: seen as 189 output tok/s meeting the SLOs at 15 users
    where the sweep's own 16-user step made 98 and missed them."""
    from packager.loadtest.config import ConcurrencyProfile, RateProfile, SweepProfile

    sweep = cfg.profile
    assert isinstance(sweep, SweepProfile)
    profile: ConcurrencyProfile | RateProfile
    if sweep.mode == "concurrency":
        profile = ConcurrencyProfile(users=int(load), duration_s=probe_s)
    else:
        profile = RateProfile(requests_per_s=load, duration_s=probe_s, arrival=sweep.arrival,
                              max_in_flight=sweep.max_in_flight)
    data = cfg.model_dump()
    data.update(profile=profile.model_dump(), knee=KneeSearch().model_dump(), max_duration_s=probe_s,
                seed=cfg.seed + 1000 * index, pool_offset=pool_offset)
    if prompt_format in ("chat", "completion"):
        data["prompt_format"] = prompt_format
    return LoadTestConfig.model_validate(data)


def add_knee(result: LoadTestResult, run_dir: Path, run_one: Callable[[LoadTestConfig, Path], LoadTestResult],
             log: Callable[[str], None] = lambda m: None) -> KneeResult:
    """Run the search after a sweep: each probe is `run_one(config, out_dir)` into run_dir/knee/NN-LOAD."""
    cfg = LoadTestConfig.model_validate(result.config)
    sweep = cfg.profile
    probe_s = cfg.knee.probe_duration_s or getattr(sweep, "step_duration_s")
    mode = result.sweep.mode if result.sweep else "concurrency"
    count = iter(range(1, 1000))
    sent = [sum(p.requests_sent + p.requests_warmup_excluded for p in result.phases)]

    def probe(load: float) -> tuple[PhaseResult, str | None]:
        i = next(count)
        rel = f"knee/{i:02d}-{load:g}"
        r = run_one(probe_config(cfg, load, probe_s, result.prompt_format, i, sent[0]), run_dir / rel)
        sent[0] += sum(p.requests_sent + p.requests_warmup_excluded for p in r.phases)
        return r.phases[0], rel

    cost = result.cost
    return search_knee(mode, list(result.phases), probe, cfg.knee, probe_s,
                       usd_per_hour=cost.usd_per_hour if cost else None,
                       utilisation=cost.utilisation_fraction if cost else 1.0, log=log)
