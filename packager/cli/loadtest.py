"""CLI commands of packager.loadtest: `packager loadtest` and `packager loadtest-analyse`; packager.cli.app adds
them to the top-level `packager` command. Heavy libraries (locust) are imported inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from packager.cli.guard import console, run_guarded
from packager.cli.options import (
    api_key_env_flag,
    api_key_file_flag,
    ca_bundle_flag,
    client_access,
    header_flag,
    insecure_flag,
)

PROFILE_HELP = (
    "Traffic profile: concurrency | rate | sweep | burst | replay. Its fields come from --set KEY=VALUE "
    "(e.g. --set requests_per_s=4, --set trace=trace.jsonl) or the shortcuts --users/--rate/--duration. "
    "A sweep steps over requests/s (open loop) unless --set mode=concurrency makes its values users: "
    "--profile sweep --set mode=concurrency --set 'values=[1,4,16]'."
)


def parse_set(items: list[str]) -> dict[str, Any]:
    """['a=1', 'values=[1,2]'] -> {'a': 1, 'values': [1, 2]} (values parsed as YAML)."""
    import yaml

    from packager.errors import ConfigError

    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--set expects KEY=VALUE, got {it!r}.")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k:
            raise ConfigError(f"--set expects KEY=VALUE, got {it!r}.")
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {k}: value {v!r} is not valid YAML ({e}).") from None
    return out


PROMPTS_HELP = (
    "synthetic | suite:NAME_OR_PATH | jsonl:PATH (OpenAI chat requests) | conversations:PATH (recorded ShareGPT "
    "or OpenAI conversations, JSONL or one JSON array: each one's first user turn) | conversations-multi:PATH "
    "(one request per user turn, with the recorded history) | hf:DATASET[:SPLIT] (a Hugging Face dataset from "
    "the local cache only, never downloaded; default split train)"
)


def parse_prompts(spec: str) -> dict[str, Any]:
    """'synthetic' | 'suite:NAME_OR_PATH' | 'jsonl:PATH' | 'conversations:PATH' | 'conversations-multi:PATH' |
    'hf:DATASET[:SPLIT]' -> a prompt source dict."""
    from packager.errors import ConfigError

    if spec == "synthetic":
        return {"kind": "synthetic"}
    kind, _, arg = spec.partition(":")
    if kind == "suite" and arg:
        return {"kind": "suite", "suite": arg}
    if kind == "jsonl" and arg:
        return {"kind": "jsonl", "path": arg}
    if kind in ("conversations", "conversations-multi") and arg:
        return {"kind": "conversations", "path": arg, "multi_turn": kind == "conversations-multi"}
    if kind == "hf" and arg:
        dataset, _, split = arg.partition(":")  # a split may itself hold ':' (train[:100])
        if dataset:
            return {"kind": "hf", "dataset": dataset, **({"split": split} if split else {})}
    raise ConfigError(f"--prompts {spec!r} is not understood; give 'synthetic', 'suite:NAME_OR_PATH', 'jsonl:PATH', "
                      "'conversations:PATH', 'conversations-multi:PATH' or 'hf:DATASET[:SPLIT]'.")


def build_loadtest_dict(base: dict[str, Any], profile: str | None, sets: dict[str, Any], users: int | None,
                        rate: float | None, duration: float | None, prompts: str | None, input_tokens: int | None,
                        output_tokens: int | None, scalars: dict[str, Any]) -> dict[str, Any]:
    """Merge CLI flags over RunConfig.loadtest (a dict) without validating it."""
    lt = dict(base)
    prof = dict(lt.get("profile") or {})
    if profile is not None and prof.get("kind") != profile:
        prof = {"kind": profile}
    prof.setdefault("kind", "concurrency")
    kind = prof["kind"]
    if users is not None:
        if kind == "sweep":
            prof.update({"mode": "concurrency", "values": [users]})
        else:
            prof["users"] = users
    if rate is not None:
        if kind == "sweep":
            prof.update({"mode": "rate", "values": [rate]})
        else:
            prof["requests_per_s"] = rate
    if duration is not None:
        prof["step_duration_s" if kind == "sweep" else "duration_s"] = duration
    knee = {k[len("knee."):]: v for k, v in sets.items() if k.startswith("knee.")}  # the capacity search
    prof.update({k: v for k, v in sets.items() if not k.startswith("knee.")})
    lt["profile"] = prof
    if knee:
        lt["knee"] = {**(lt.get("knee") or {}), **knee}
    src = dict(lt.get("prompts") or {"kind": "synthetic"})
    if prompts is not None:
        new = parse_prompts(prompts)
        src = new if new["kind"] != src.get("kind") else {**src, **new}
    if input_tokens is not None or output_tokens is not None:
        if src.get("kind", "synthetic") != "synthetic":
            from packager.errors import ConfigError

            raise ConfigError("--input-tokens/--output-tokens apply to synthetic prompts only; drop them or use "
                              "--prompts synthetic.")
        if input_tokens is not None:
            src["input_tokens"] = {"dist": "constant", "mean": input_tokens}
        if output_tokens is not None:
            src["output_tokens"] = {"dist": "constant", "mean": output_tokens}
    lt["prompts"] = src
    lt.update({k: v for k, v in scalars.items() if v is not None})
    return lt


def manual_run_instructions(plan_path: Path, workers: int) -> str:
    from packager.loadtest.runner import locustfile_path

    d = plan_path.parent
    lf = locustfile_path()
    return (
        f"Wrote {plan_path}. To run it by hand with {workers} worker(s) (any hosts that reach the target at the "
        "plan's URL; give each the same PACKAGER_API_KEY, PACKAGER_CLIENT_HEADERS, PACKAGER_CA_BUNDLE or "
        "PACKAGER_TLS_VERIFY it needs, as keys and headers are never written into the plan):\n"
        f"  master:  PACKAGER_LOADTEST_PLAN={plan_path} PACKAGER_LOADTEST_RECORDS={d / 'records.jsonl'} \\\n"
        f"           python -m locust -f {lf} --headless --only-summary --exit-code-on-error 0 --master \\\n"
        f"           --master-bind-host 0.0.0.0 --expect-workers {workers} -u {workers} -r {workers} --run-time 1h\n"
        f"  workers: python -m locust -f {lf} --worker --master-host MASTER_HOST\n"
        f"  then:    packager loadtest-analyse {d}\n"
        "The master hands the plan to the workers and collects their records; the run ends by itself when "
        "every phase has been run (--run-time is only a backstop)."
    )


def loadtest(
    target: str = typer.Option(..., "--target", help="Base URL of an OpenAI-compatible server, local or remote, "
                               "e.g. http://127.0.0.1:8000 or https://llm.staging.example.com"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run configuration YAML (its loadtest:, "
                                          "slo: and pricing: sections)"),
    profile: Optional[str] = typer.Option(None, "--profile", help=PROFILE_HELP),
    set_: list[str] = typer.Option([], "--set", help="Profile field KEY=VALUE, or knee.KEY=VALUE for the capacity "
                                   "search after a sweep, e.g. knee.enabled=true (repeatable)"),
    users: Optional[int] = typer.Option(None, "--users", help="Concurrent users (concurrency profile)"),
    rate: Optional[float] = typer.Option(None, "--rate", help="Requests per second (rate profile)"),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds of load (per step for a sweep)"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help=PROMPTS_HELP),
    input_tokens: Optional[int] = typer.Option(None, "--input-tokens", help="Synthetic prompt length (tokens)"),
    output_tokens: Optional[int] = typer.Option(None, "--output-tokens", help="Synthetic output length (tokens)"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Override every request's max_tokens"),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Hard cap on requests sent"),
    max_duration: Optional[float] = typer.Option(None, "--max-duration", help="Hard cap on dispatch time (s)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="0: one locust process; N: a master and N "
                                          "local worker processes"),
    model: Optional[str] = typer.Option(None, "--model", help="Model name to send (default: GET /v1/models)"),
    slo_ttft_ms: Optional[float] = typer.Option(None, "--slo-ttft-ms", help="TTFT SLO (ms)"),
    slo_tpot_ms: Optional[float] = typer.Option(None, "--slo-tpot-ms", help="TPOT SLO (ms)"),
    instance: Optional[str] = typer.Option(None, "--instance", help="Instance name in the price table"),
    usd_per_hour: Optional[float] = typer.Option(None, "--usd-per-hour", help="Hourly price (overrides --instance)"),
    price_table: Optional[Path] = typer.Option(None, "--price-table", help="Your price table (YAML)"),
    utilisation: Optional[float] = typer.Option(None, "--utilisation", help="Share of paid hours at this load "
                                                "(0-1], for the cost"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: "
                                       "<output_dir>/loadtest)"),
    json_out: bool = typer.Option(False, "--json", help="Also print the result as JSON on stdout"),
    plan_only: bool = typer.Option(False, "--plan-only", help="Write plan.json only and print the locust "
                                   "commands to run it by hand (e.g. with workers on other hosts)"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Seconds at the start of each phase whose "
                                           "requests are sent but left out of the figures"),
    prompt_format: Optional[str] = typer.Option(None, "--prompt-format", help="auto (default: asks the target "
                                                "once), chat (/v1/chat/completions) or completion (raw prompts "
                                                "through /v1/completions, for a base model)"),
    api_key_env: Optional[str] = api_key_env_flag(),
    api_key_file: Optional[Path] = api_key_file_flag(),
    header: list[str] = header_flag(),
    ca_bundle: Optional[Path] = ca_bundle_flag(),
    insecure: bool = insecure_flag(),
) -> None:
    """Load-test a server with locust (headless, in subprocesses): latency percentiles, goodput, $/1M tokens.
    Sends the API key (--api-key-env/--api-key-file, else PACKAGER_API_KEY) as `Authorization: Bearer`."""
    args = dict(locals())
    run_guarded(_loadtest, **args)


def loadtest_analyse(
    run_dir: Path = typer.Argument(..., help="A directory with plan.json and records.jsonl"),
    slo_ttft_ms: Optional[float] = typer.Option(None, "--slo-ttft-ms", help="TTFT SLO (ms); default: the plan's"),
    slo_tpot_ms: Optional[float] = typer.Option(None, "--slo-tpot-ms", help="TPOT SLO (ms); default: the plan's"),
    json_out: bool = typer.Option(False, "--json", help="Also print the result as JSON on stdout"),
) -> None:
    """(Re)analyse the records of a load test, e.g. one run by hand with remote workers; writes loadtest.json."""

    def go() -> None:
        import json

        from pydantic import ValidationError

        from packager.config import SLOConfig, format_validation_error
        from packager.errors import ConfigError
        from packager.loadtest.render import summary_renderables
        from packager.loadtest.runner import analyse_run_dir

        slo = None
        if slo_ttft_ms is not None or slo_tpot_ms is not None:
            plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").exists() else {}
            base = dict((plan.get("meta") or {}).get("slo") or {})
            base.update({k: v for k, v in (("ttft_ms", slo_ttft_ms), ("tpot_ms", slo_tpot_ms)) if v is not None})
            try:
                slo = SLOConfig.model_validate(base)
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, "the SLO flags")) from None
        result = analyse_run_dir(run_dir, slo=slo)
        for r in summary_renderables(result):
            console.print(r)
        if json_out:
            print(json.dumps(result.model_dump(mode="json"), indent=2))

    run_guarded(go)


def _loadtest(target: str, config: Path | None, profile: str | None, set_: list[str], users: int | None,
              rate: float | None, duration: float | None, prompts: str | None, input_tokens: int | None,
              output_tokens: int | None, max_tokens: int | None, max_requests: int | None,
              max_duration: float | None, workers: int | None, model: str | None, slo_ttft_ms: float | None,
              slo_tpot_ms: float | None, instance: str | None, usd_per_hour: float | None, price_table: Path | None,
              utilisation: float | None, out: Path | None, json_out: bool, plan_only: bool, warmup: float | None,
              prompt_format: str | None, api_key_env: str | None, api_key_file: Path | None, header: list[str],
              ca_bundle: Path | None, insecure: bool) -> None:
    from packager.core.access import normalize_target

    normalize_target(target)
    with client_access(api_key_env, api_key_file, header, ca_bundle, insecure):
        _run_loadtest(target, config, profile, set_, users, rate, duration, prompts, input_tokens, output_tokens,
                      max_tokens, max_requests, max_duration, workers, model, slo_ttft_ms, slo_tpot_ms, instance,
                      usd_per_hour, price_table, utilisation, out, json_out, plan_only, warmup, prompt_format)


def bounds_line(cfg: Any) -> str:
    """How much load a run sends at most: requests, dispatch time and requests in flight."""
    p = cfg.profile
    planned = p.planned_dispatch_s()
    time_s = min(planned, cfg.max_duration_s) if planned is not None else cfg.max_duration_s
    if p.kind == "concurrency":
        flight = f"{p.users} concurrent users"
    elif p.kind == "sweep" and p.mode == "concurrency":
        flight = f"up to {int(max(p.values))} concurrent users (sweep over users)"
    elif p.kind == "sweep":
        flight = f"up to {max(p.values):g} requests/s offered, at most {p.max_in_flight} in flight (sweep over rates)"
    elif p.kind == "rate":
        flight = f"{p.requests_per_s:g} requests/s offered, at most {p.max_in_flight} in flight"
    else:
        flight = f"{p.kind} arrivals"
    probe = ("; first one 1-token chat request to learn the prompt format (--prompt-format chat|completion skips "
             "it)" if cfg.prompt_format == "auto" else "")
    knee = ""
    if cfg.knee.enabled and p.kind == "sweep":
        top = max(p.values) * cfg.knee.extend_factor
        knee = (f"; then a capacity search: at most {cfg.knee.max_probes} probes within {cfg.knee.budget_s:g} s, "
                f"up to {top:g} {'users' if p.mode == 'concurrency' else 'requests/s'}")
    return (f"at most {cfg.max_requests} requests over at most {time_s:g} s of dispatch ({flight}), each at most "
            f"{cfg.request_timeout_s:g} s{probe}{knee}")


def _run_loadtest(target: str, config: Path | None, profile: str | None, set_: list[str], users: int | None,
                  rate: float | None, duration: float | None, prompts: str | None, input_tokens: int | None,
                  output_tokens: int | None, max_tokens: int | None, max_requests: int | None,
                  max_duration: float | None, workers: int | None, model: str | None, slo_ttft_ms: float | None,
                  slo_tpot_ms: float | None, instance: str | None, usd_per_hour: float | None,
                  price_table: Path | None, utilisation: float | None, out: Path | None, json_out: bool,
                  plan_only: bool, warmup: float | None, prompt_format: str | None) -> None:
    import json

    from packager.config import load_config
    from packager.core.access import normalize_target, where_line
    from packager.core.progress import progress_bar
    from packager.loadtest.config import parse_loadtest_config
    from packager.loadtest.pricing import resolve_price
    from packager.loadtest.render import summary_renderables
    from packager.loadtest.runner import run_loadtest, write_plan

    overrides: dict[str, Any] = {}
    slo = {k: v for k, v in (("ttft_ms", slo_ttft_ms), ("tpot_ms", slo_tpot_ms)) if v is not None}
    if slo:
        overrides["slo"] = slo
    pricing: dict[str, Any] = {}
    if instance is not None:
        pricing.update({"instance": instance, "usd_per_hour": None})
    if usd_per_hour is not None:
        pricing["usd_per_hour"] = usd_per_hour
        if instance is None:
            pricing["instance"] = None  # an explicit price is not the default instance's
    if price_table is not None:
        pricing["price_table"] = str(price_table)
    if pricing:
        overrides["pricing"] = pricing
    run_cfg = load_config(config, overrides)
    base = run_cfg.loadtest.model_dump(mode="json", exclude_unset=True) if run_cfg.loadtest else {}
    lt = build_loadtest_dict(base, profile, parse_set(set_), users, rate, duration, prompts,
                             input_tokens, output_tokens,
                             {"max_tokens": max_tokens, "max_requests": max_requests, "max_duration_s": max_duration,
                              "workers": workers, "utilisation_fraction": utilisation, "warmup_s": warmup,
                              "prompt_format": prompt_format})
    cfg = parse_loadtest_config(lt, "the load-test configuration (config file + flags)")
    if run_cfg.pricing.instance or run_cfg.pricing.usd_per_hour is not None:
        resolve_price(run_cfg.pricing)  # fail before any load is sent or anything is written
    out_dir = out or Path(run_cfg.output_dir) / "loadtest"
    if not plan_only:
        console.print(f"Load goes to {where_line(normalize_target(target))}; {bounds_line(cfg)}.", highlight=False)
    if plan_only:
        plan_path = write_plan(target, cfg, run_cfg.slo, run_cfg.pricing, out_dir, model=model)
        console.print(manual_run_instructions(plan_path, max(1, cfg.workers)), highlight=False)
        return
    with progress_bar("load test", total=None, console=console, transient=True, count=False, eta=False,
                      text=["{info}"], fields={"info": "starting locust"}) as bar:

        def progress(p: dict[str, Any]) -> None:
            bar.update(total=p["planned_s"], completed=min(p["elapsed_s"], p["planned_s"]),
                       info=f"{p['requests_done']} requests done")

        result = run_loadtest(target, cfg, run_cfg.slo, run_cfg.pricing, out_dir, model=model, progress=progress,
                              log=lambda m: console.print(m, highlight=False))
    for r in summary_renderables(result):
        console.print(r)
    console.print(f"Result: {out_dir / 'loadtest.json'}")
    if json_out:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
