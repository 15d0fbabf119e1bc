"""Run a load test: locust HEADLESS in subprocesses (never imported here), then analyse its records.

    result = run_loadtest("http://127.0.0.1:8000", LoadTestConfig(...), SLOConfig(), PricingConfig(), Path("out"))

The output directory is written atomically (a temporary directory renamed when complete):
    loadtest.json   the LoadTestResult
    records.jsonl   one JSON line per request (and one per phase and generator share)
    plan.json       exactly what the generator was asked to do
    locust.log, locust-worker-N.log, locust_stats.csv ...   locust's own logs and statistics
    sweep.png       for a sweep: throughput, goodput and latency percentiles against the load
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from packager.config import PricingConfig, SLOConfig
from packager.core.access import normalize_target
from packager.errors import ConfigError, PackagerError, ServerError
from packager.fsutil import atomic_dir, atomic_write_json, atomic_write_text, iter_record_file
from packager.loadtest.config import LoadTestConfig
from packager.loadtest.metrics import cost_result, highest_load_meeting_slo, summarize_phase, sweep_result
from packager.loadtest.plan import build_plan, planned_wall_s
from packager.loadtest.pricing import PriceQuote, resolve_price
from packager.loadtest.result import GeneratorProcess, GeneratorResult, LoadTestResult, PhaseResult

PLAN_ENV = "PACKAGER_LOADTEST_PLAN"
RECORDS_ENV = "PACKAGER_LOADTEST_RECORDS"
STARTUP_MARGIN_S = 60.0
DISPATCH_LAG_LIMIT_MS = 50.0
ProgressFn = Callable[[dict[str, Any]], None]


def locustfile_path() -> Path:
    """The locustfile shipped with packager (loadtests/openai_streaming.py re-exports it)."""
    return Path(__file__).with_name("locustfile_openai.py")


def discover_model(base_url: str, timeout_s: float = 10.0) -> str:
    """The model name to send: the only entry of GET /v1/models (several entries: ask for --model)."""
    import httpx

    from packager.core.access import http_options, unauthorized_hint

    try:
        r = httpx.get(f"{base_url}/v1/models", timeout=timeout_s, **http_options())
    except httpx.HTTPError as e:
        raise ServerError(f"Cannot reach {base_url}/v1/models ({type(e).__name__}: {e}); "
                          "is the server running?") from None
    if r.status_code != 200:
        raise ServerError(f"GET {base_url}/v1/models answered HTTP {r.status_code}: {r.text[:200]!r}."
                          + unauthorized_hint(r.status_code))
    try:
        ids = [m["id"] for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"GET {base_url}/v1/models did not return an OpenAI model list: {r.text[:200]!r}.") from None
    if not ids:
        raise ServerError(f"{base_url}/v1/models lists no model.")
    if len(ids) > 1:
        raise ConfigError(f"{base_url} serves several models ({', '.join(ids)}); choose one with --model.")
    return ids[0]


# ------------------------------------------------------------------------------------ processes
class _CpuMonitor(threading.Thread):
    """Samples the cumulative CPU time of the generator processes every `interval_s`."""

    def __init__(self, procs: dict[int, str], interval_s: float = 0.5):
        super().__init__(name="loadgen-cpu", daemon=True)
        import psutil

        self.interval_s = interval_s
        self.roles = dict(procs)
        self.handles = {}
        for pid in procs:
            try:
                self.handles[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
        self.samples: dict[int, list[tuple[float, float]]] = {pid: [] for pid in procs}
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            now = time.time()
            for pid, p in list(self.handles.items()):
                try:
                    t = p.cpu_times()
                    self.samples[pid].append((now, t.user + t.system))
                except psutil.Error:
                    self.handles.pop(pid, None)
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def summary(self, t_from: float | None, t_to: float | None) -> list[GeneratorProcess]:
        out = []
        for pid, s in self.samples.items():
            cpu_s = s[-1][1] if s else 0.0
            mean = mx = None
            if s and t_from is not None and t_to is not None:
                win = [x for x in s if t_from - self.interval_s <= x[0] <= t_to + self.interval_s]
                if len(win) >= 2 and win[-1][0] > win[0][0]:
                    mean = (win[-1][1] - win[0][1]) / (win[-1][0] - win[0][0])
                    mx = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(win, win[1:]) if b[0] > a[0])
            out.append(GeneratorProcess(role=self.roles[pid], pid=pid, cpu_seconds=cpu_s,
                                        cpu_fraction_of_core_mean=mean, cpu_fraction_of_core_max=mx))
        return out


def _popen(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    f = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        f.close()


def _count_requests(path: Path, state: dict[str, int]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(state.get("offset", 0))
            data = f.read()
    except FileNotFoundError:
        return state.get("count", 0)
    cut = data.rfind(b"\n") + 1
    state["offset"] = state.get("offset", 0) + cut
    state["count"] = state.get("count", 0) + data[:cut].count(b'"type":"request"')
    return state["count"]


def run_locust(plan_path: Path, records_path: Path, work_dir: Path, target_url: str, workers: int,
               timeout_s: float, planned_s: float, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run locust headless (one process, or a master and `workers` local worker processes) until the plan ends.

    Returns {"returncode", "timed_out", "processes": [GeneratorProcess...], "cpu_monitor", "logs"}.
    """
    from packager.engines.base import free_port, stop_process
    from packager.fsutil import tail

    if importlib.util.find_spec("locust") is None:
        raise ServerError("locust is not installed: install packager with the 'cpu' or 'gpu' extra (locust==2.47.0).")
    lf = str(locustfile_path())
    env = dict(os.environ)
    env.update({PLAN_ENV: str(plan_path), RECORDS_ENV: str(records_path), "PYTHONUNBUFFERED": "1"})
    common = ["--headless", "--only-summary", "--exit-code-on-error", "0", "--host", target_url,
              "--run-time", f"{int(timeout_s) + 1}s", "--csv", str(work_dir / "locust"), "--loglevel", "INFO"]
    procs: list[tuple[subprocess.Popen, str, Path]] = []
    log = work_dir / "locust.log"
    try:
        if workers <= 0:
            cmd = [sys.executable, "-m", "locust", "-f", lf, *common, "-u", "1", "-r", "1"]
            procs.append((_popen(cmd, log, env), "local", log))
        else:
            port = free_port()
            cmd = [sys.executable, "-m", "locust", "-f", lf, *common, "--master", "--master-bind-host", "127.0.0.1",
                   "--master-bind-port", str(port), "--expect-workers", str(workers),
                   "--expect-workers-max-wait", "120", "-u", str(workers), "-r", str(workers)]
            procs.append((_popen(cmd, log, env), "master", log))
            # workers get the plan from the master
            wenv = {k: v for k, v in env.items() if k not in (PLAN_ENV, RECORDS_ENV)}
            for i in range(workers):
                wlog = work_dir / f"locust-worker-{i}.log"
                wcmd = [sys.executable, "-m", "locust", "-f", lf, "--worker", "--master-host", "127.0.0.1",
                        "--master-port", str(port), "--loglevel", "INFO"]
                procs.append((_popen(wcmd, wlog, wenv), "worker", wlog))
        mon = _CpuMonitor({p.pid: role for p, role, _ in procs})
        mon.start()
        main = procs[0][0]
        t0 = time.monotonic()
        state: dict[str, int] = {}
        timed_out = False
        while main.poll() is None:
            elapsed = time.monotonic() - t0
            if elapsed > timeout_s + STARTUP_MARGIN_S:
                timed_out = True
                break
            if progress is not None:
                progress({"elapsed_s": elapsed, "planned_s": planned_s,
                          "requests_done": _count_requests(records_path, state)})
            for p, role, plog in procs[1:]:
                if p.poll() is not None and p.returncode not in (0, None) and main.poll() is None:
                    raise ServerError(f"A locust worker exited with code {p.returncode} during the run. "
                                      f"Last lines of {plog.name}:\n{tail(plog)}")
            time.sleep(0.25)
        deadline = time.monotonic() + 15
        for p, _, _ in procs[1:]:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        mon.stop()
        if progress is not None:
            progress({"elapsed_s": time.monotonic() - t0, "planned_s": planned_s,
                      "requests_done": _count_requests(records_path, state)})
        return {"returncode": main.returncode, "timed_out": timed_out, "monitor": mon,
                "timeout_s": timeout_s + STARTUP_MARGIN_S,
                "logs": [str(plog.name) for _, _, plog in procs]}
    finally:
        for p, _, _ in procs:
            stop_process(p, grace_s=5)


def read_records(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(request records, phase summaries, driver errors) from a records file."""
    reqs, sums, errs = [], [], []
    for r in iter_record_file(Path(path)):
        t = r.get("type")
        if t == "request":
            reqs.append(r)
        elif t == "phase_summary":
            sums.append(r)
        elif t == "driver_error":
            errs.append(r)
    return reqs, sums, errs


# ------------------------------------------------------------------------------------- analysis
def analyse(plan: dict, cfg: LoadTestConfig, slo: SLOConfig, quote: PriceQuote | None, reqs: list[dict],
            sums: list[dict], monitor: _CpuMonitor | None) -> dict[str, Any]:
    """Phase results, sweep, cost and generator figures from the records (pure apart from the monitor)."""
    phases: list[PhaseResult] = []
    for ph in plan["phases"]:
        k = ph["index"]
        phases.append(summarize_phase(k, ph["label"], {a: float(b) for a, b in ph["load"].items()},
                                      [r for r in reqs if r.get("phase") == k],
                                      [s for s in sums if s.get("phase") == k], slo, cfg.slo_attainment_target,
                                      float(ph["duration_s"]), cfg.warmup_s, float(ph.get("ramp_s") or 0.0)))
    is_sweep = cfg.profile.kind == "sweep"
    sweep = sweep_result(cfg.profile.mode, phases, cfg.slo_attainment_target) if is_sweep else None  # type: ignore[union-attr]
    if is_sweep:
        best = highest_load_meeting_slo(phases)
        if best is not None:
            summary, basis = best, f"the highest load meeting the SLOs ({best.label})"
        else:
            summary = max(phases, key=lambda p: p.output_token_throughput_per_s)
            basis = f"no step met the SLOs; the step with the highest output token throughput ({summary.label})"
    else:
        summary, basis = phases[0], f"the only phase ({phases[0].label})"
    cost = cost_result(quote, phases, is_sweep, cfg.utilisation_fraction) if quote is not None else None

    lags = [r["dispatch_lag_ms"] for r in reqs if r.get("dispatch_lag_ms") is not None]
    from packager.loadtest.metrics import percentile

    lag_p99 = percentile(lags, 99) if lags else None
    t_from = min((r["t_start_unix"] for r in reqs), default=None)
    t_to = max((r.get("t_end_unix") or r["t_start_unix"] for r in reqs), default=None)
    procs = monitor.summary(t_from, t_to) if monitor is not None else []
    busiest = max((p.cpu_fraction_of_core_mean for p in procs if p.cpu_fraction_of_core_mean is not None), default=None)
    reasons = []
    for p in procs:
        if p.cpu_fraction_of_core_mean is not None and p.cpu_fraction_of_core_mean > cfg.generator_cpu_limit_fraction:
            reasons.append(f"locust {p.role} process {p.pid} used {p.cpu_fraction_of_core_mean:.0%} of a core while "
                           f"requests ran (limit {cfg.generator_cpu_limit_fraction:.0%}): the generator, not the "
                           "server, may have limited throughput and inflated latencies; "
                           "add --workers or lower the load")
    if lag_p99 is not None and lag_p99 > DISPATCH_LAG_LIMIT_MS:
        reasons.append(f"open-loop arrivals were sent late (dispatch lag p99 {lag_p99:.1f} ms > "
                       f"{DISPATCH_LAG_LIMIT_MS:g} ms): the generator could not keep the schedule")
    gen = GeneratorResult(processes=procs, cpu_fraction_of_core_max=busiest,
                          cpu_limit_fraction=cfg.generator_cpu_limit_fraction, dispatch_lag_ms_p99=lag_p99,
                          bottleneck_suspected=bool(reasons), reasons=reasons)
    return {"phases": phases, "summary": summary, "summary_basis": basis, "sweep": sweep, "cost": cost,
            "generator": gen}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("packager", "locust"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _prepare(target_url: str, cfg: LoadTestConfig, slo: SLOConfig, pricing: PricingConfig,
             model: str | None) -> tuple[str, PriceQuote | None, str, dict]:
    """Validate everything that can fail before a request is sent or a file is written; build the plan."""
    base = normalize_target(target_url)
    quote = resolve_price(pricing) if (pricing.instance or pricing.usd_per_hour is not None) else None
    model = model or discover_model(base)
    fmt = cfg.prompt_format
    if fmt == "auto":
        from packager.core.prompt_format import probe_format
        from packager.evaluate.client import OpenAIClient

        client = OpenAIClient(base, timeout_s=cfg.request_timeout_s, retries=0)
        try:
            fmt = probe_format(client, model)
        finally:
            client.close()
    plan = build_plan(cfg, base, model, prompt_format=fmt)
    # Everything needed to analyse the records later (packager loadtest-analyse), e.g. after a manual run.
    plan["meta"] = {"loadtest_config": cfg.model_dump(mode="json"), "slo": slo.model_dump(mode="json"),
                    "pricing": pricing.model_dump(mode="json")}
    return base, quote, model, plan


def _finalize(run_dir: Path, plan: dict, cfg: LoadTestConfig, slo: SLOConfig, pricing: PricingConfig,
              quote: PriceQuote | None, run: dict[str, Any] | None, t_wall: float) -> LoadTestResult:
    """Analyse run_dir/records.jsonl and write run_dir/loadtest.json (and sweep.png)."""
    records_path = run_dir / "records.jsonl"
    warnings: list[str] = []
    for ph in plan["phases"]:
        if ph.get("trace_requests_beyond_max_duration"):
            warnings.append(f"{ph['trace_requests_beyond_max_duration']} trace requests arrive after "
                            f"max_duration_s={cfg.max_duration_s:g} s and were not sent")
    reqs, sums, errs = read_records(records_path)
    if not reqs and not sums:
        from packager.fsutil import tail

        where = "" if run is None else (f" (locust exit code {run['returncode']}"
                                        f"{', timed out' if run['timed_out'] else ''})")
        raise ServerError(f"The load test produced no records{where}. Last lines of the locust log:\n"
                          f"{tail(run_dir / 'locust.log')}")
    expected = len(plan["phases"]) * plan["shares"]
    timed_out = bool(run and run["timed_out"])
    complete = len(sums) == expected and not errs and not timed_out
    if timed_out:
        warnings.append(f"locust did not finish within {run['timeout_s']:.0f} s and was stopped")  # type: ignore[index]
    if len(sums) != expected:
        warnings.append(f"{len(sums)} of {expected} phase reports arrived: some generator shares did not finish")
    for e in errs:
        warnings.append(f"generator share {e.get('share')} failed: {e.get('error')}")
    a = analyse(plan, cfg, slo, quote, reqs, sums, run["monitor"] if run else None)
    if run is None:
        warnings.append("the generator's CPU use was not measured (records analysed after a run packager did not "
                        "start)")
    warnings += a["generator"].reasons
    for ph in a["phases"]:
        if ph.requests_missing_usage:
            warnings.append(f"phase {ph.index}: {ph.requests_missing_usage} responses carried no usage block; "
                            "their tokens are not counted (does the server support stream_options.include_usage?)")
        if ph.requests_sent == 0:
            warnings.append(f"phase {ph.index} ({ph.label}) sent no request")
    if a["sweep"] is not None and a["sweep"].highest_load_meeting_slo is None:
        warnings.append("no sweep step met the SLOs")
    files = {"records": "records.jsonl", "plan": "plan.json"}
    if run is not None:
        files["log"] = run["logs"][0]
        for i, name in enumerate(run["logs"][1:]):
            files[f"worker_log_{i}"] = name
    result = LoadTestResult(
        created_unix=time.time(), target_url=plan["target_url"], model=plan["model"],
        config=cfg.model_dump(mode="json"), slo=slo, pricing=pricing, slo_attainment_target=cfg.slo_attainment_target,
        phases=a["phases"], summary=a["summary"], summary_basis=a["summary_basis"], sweep=a["sweep"], cost=a["cost"],
        generator=a["generator"], complete=complete, warnings=warnings, files=files, versions=_versions(),
        prompt_format=plan.get("prompt_format", "chat"), telemetry=_telemetry(run, plan, reqs, sums),
        prompt_stats=plan.get("prompt_stats"),
        wall_time_s=time.monotonic() - t_wall)
    if a["sweep"] is not None:
        try:
            from packager.loadtest.render import plot_sweep

            plot_sweep(result, run_dir / "sweep.png")
            result.files["plot"] = "sweep.png"
        except Exception as e:  # noqa: BLE001 - a plot must never cost the measurement
            result.warnings.append(f"sweep plot not drawn: {type(e).__name__}: {e}")
    result.wall_time_s = time.monotonic() - t_wall
    atomic_write_json(run_dir / "loadtest.json", result.model_dump(mode="json"))
    return result


def _telemetry(run: dict[str, Any] | None, plan: dict, reqs: list[dict], sums: list[dict]) -> dict[str, Any] | None:
    """The server's own figures per phase (packager.loadtest.telemetry), when a scraper ran."""
    scraper = (run or {}).get("telemetry")
    if scraper is None:
        return None
    from packager.loadtest.telemetry import phase_windows, summarize_telemetry

    return summarize_telemetry(scraper.samples, phase_windows(plan, reqs, sums), scraper.error, scraper.interval_s,
                               scraper.failures)


def run_loadtest(target_url: str, cfg: LoadTestConfig, slo: SLOConfig, pricing: PricingConfig, out_dir: Path,
                 model: str | None = None, progress: ProgressFn | None = None,
                 log: Callable[[str], None] | None = None) -> LoadTestResult:
    """Load-test an OpenAI-compatible server at any http(s) URL; write out_dir atomically; return the result.
    A sweep with `knee.enabled` is followed by the capacity search (packager.loadtest.knee), its probes under
    out_dir/knee/, and the result and plot are written again with the knee.

    Refuses malformed targets and bad prices before any request is sent or any file is written. The model
    name is discovered from GET /v1/models when not given. The key, extra headers and TLS verification are
    packager.core.access's (the locust processes inherit them through their environment).
    """
    t_wall = time.monotonic()
    base, quote, model, plan = _prepare(target_url, cfg, slo, pricing, model)
    planned = planned_wall_s(plan)
    dispatch = sum(float(p["duration_s"]) for p in plan["phases"])
    with atomic_dir(Path(out_dir)) as tmp:
        plan_path, records_path = tmp / "plan.json", tmp / "records.jsonl"
        atomic_write_text(plan_path, json.dumps(plan))
        records_path.touch()
        scraper = None
        if cfg.telemetry_interval_s > 0:
            from packager.loadtest.telemetry import TelemetryScraper

            scraper = TelemetryScraper(base, interval_s=cfg.telemetry_interval_s)
            scraper.start()
        try:
            run = run_locust(plan_path, records_path, tmp, base, cfg.workers, timeout_s=planned + 30.0,
                             planned_s=dispatch, progress=progress)
        finally:
            if scraper is not None:
                scraper.stop()
        run["telemetry"] = scraper
        result = _finalize(tmp, plan, cfg, slo, pricing, quote, run, t_wall)
    if cfg.knee.enabled and result.sweep is not None:
        _add_knee(result, Path(out_dir), lambda c, d: run_loadtest(base, c, slo, pricing, d, model=model),
                  log or (lambda m: None))
    return result


def _add_knee(result: LoadTestResult, run_dir: Path, run_one: Callable[[LoadTestConfig, Path], LoadTestResult],
              log: Callable[[str], None]) -> None:
    from packager.loadtest.knee import add_knee

    t0 = time.monotonic()
    try:
        result.knee = add_knee(result, run_dir, run_one, log=log)
    except (PackagerError, OSError) as e:  # the sweep stands without it
        result.warnings.append(f"capacity search stopped: {e}")
        log(f"capacity search stopped: {e}")
    if result.files.get("plot") and result.knee is not None:
        from packager.loadtest.render import plot_sweep

        plot_sweep(result, run_dir / result.files["plot"])
    result.wall_time_s += time.monotonic() - t0
    atomic_write_json(run_dir / "loadtest.json", result.model_dump(mode="json"))


def write_plan(target_url: str, cfg: LoadTestConfig, slo: SLOConfig, pricing: PricingConfig, out_dir: Path,
               model: str | None = None) -> Path:
    """Write out_dir/plan.json (and an empty records.jsonl) for a run started by hand, e.g. with workers on
    other hosts (see loadtests/README.md); analyse it afterwards with analyse_run_dir(out_dir)."""
    _, _, _, plan = _prepare(target_url, cfg, slo, pricing, model)
    with atomic_dir(Path(out_dir)) as tmp:
        atomic_write_text(tmp / "plan.json", json.dumps(plan))
        (tmp / "records.jsonl").touch()
    return Path(out_dir) / "plan.json"


def analyse_run_dir(run_dir: Path, slo: SLOConfig | None = None,
                    pricing: PricingConfig | None = None) -> LoadTestResult:
    """Analyse plan.json + records.jsonl of a run directory (SLOs and prices default to those of the plan)."""
    run_dir = Path(run_dir)
    try:
        plan = json.loads((run_dir / "plan.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} holds no plan.json; write one with `packager loadtest --plan-only`.") from None
    meta = plan.get("meta") or {}
    from packager.loadtest.config import parse_loadtest_config

    cfg = parse_loadtest_config(meta.get("loadtest_config"), f"{run_dir}/plan.json meta.loadtest_config")
    slo = slo or SLOConfig.model_validate(meta.get("slo") or {})
    pricing = pricing or PricingConfig.model_validate(meta.get("pricing") or {})
    quote = resolve_price(pricing) if (pricing.instance or pricing.usd_per_hour is not None) else None
    return _finalize(run_dir, plan, cfg, slo, pricing, quote, None, time.monotonic())


def load_result(path: Path) -> LoadTestResult:
    """Read a loadtest.json (or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "loadtest.json"
    try:
        return LoadTestResult.model_validate_json(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"No load-test result at {p}.") from None


__all__ = ["run_loadtest", "write_plan", "analyse_run_dir", "normalize_target", "discover_model",
           "locustfile_path", "load_result"]
