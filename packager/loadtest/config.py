"""The load-test configuration: a traffic profile, a prompt source, and hard bounds.

`RunConfig.loadtest` (a plain dict in packager.config) is validated with `LoadTestConfig`:

    loadtest:
      profile: {kind: rate, requests_per_s: 4, duration_s: 30, arrival: poisson}
      prompts: {kind: synthetic, input_tokens: {mean: 128}, output_tokens: {mean: 64}}
      max_duration_s: 120
      max_requests: 2000
      workers: 0

Profiles (a discriminated union on `kind`, each registered in PROFILES with the code that turns it into
phases for the locustfile, see packager.loadtest.plan):
  * concurrency: a fixed number of users, each sending its next request when the previous one ends (closed loop);
  * rate: arrivals at a constant rate, Poisson or evenly spaced, OPEN LOOP: a slow server does not slow
    the offered load; arrivals that find `max_in_flight` requests outstanding are dropped and counted;
  * sweep: steps over rates or concurrencies, each a bounded time, drained before the next;
  * burst: `bursts` bursts of `burst_size` simultaneous requests every `interval_s`, optionally over a
    Poisson background rate;
  * replay: a trace of (timestamp, input and output length) replayed at a speed-up factor.

Every run is bounded in time (max_duration_s: the dispatch time of all phases; draining in-flight requests
after each phase adds at most drain_timeout_s) and in request count (max_requests). Any http(s) target is
accepted (packager.core.access.normalize_target); `packager loadtest` says where the load goes and how much at
most before it sends any.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from packager.core.validation import parse_model

MAX_RATE_PER_S = 5000.0
MAX_DURATION_S = 24 * 3600.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------- profiles
class ConcurrencyProfile(_Strict):
    """`users` closed-loop users for `duration_s` seconds."""

    kind: Literal["concurrency"] = "concurrency"
    users: int = Field(4, ge=1, le=4096)
    duration_s: float = Field(30.0, gt=0, le=MAX_DURATION_S)

    def planned_dispatch_s(self) -> float:
        return self.duration_s


class RateProfile(_Strict):
    """Open-loop arrivals at `requests_per_s` for `duration_s` seconds."""

    kind: Literal["rate"] = "rate"
    requests_per_s: float = Field(2.0, gt=0, le=MAX_RATE_PER_S)
    duration_s: float = Field(30.0, gt=0, le=MAX_DURATION_S)
    arrival: Literal["poisson", "constant"] = "poisson"
    max_in_flight: int = Field(256, ge=1, le=100_000)

    def planned_dispatch_s(self) -> float:
        return self.duration_s


class SweepProfile(_Strict):
    """Steps over `values`, `step_duration_s` each: requests/s offered (open loop) for mode=rate, the default;
    closed-loop users for mode=concurrency."""

    kind: Literal["sweep"] = "sweep"
    mode: Literal["rate", "concurrency"] = "rate"
    values: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0], min_length=1, max_length=64)
    step_duration_s: float = Field(20.0, gt=0, le=MAX_DURATION_S)
    arrival: Literal["poisson", "constant"] = "poisson"
    max_in_flight: int = Field(256, ge=1, le=100_000)

    @field_validator("values")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        for x in v:
            if not x > 0:
                raise ValueError(f"every sweep value must be > 0, got {x}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SweepProfile":
        if self.mode == "concurrency":
            bad = [x for x in self.values if float(x) != int(x)]
            if bad:
                raise ValueError(f"mode=concurrency needs whole numbers of users, got {bad}")
        else:
            bad = [x for x in self.values if x > MAX_RATE_PER_S]
            if bad:
                raise ValueError(f"rates above {MAX_RATE_PER_S} requests/s are not supported, got {bad}")
        return self

    def planned_dispatch_s(self) -> float:
        return self.step_duration_s * len(self.values)


class BurstProfile(_Strict):
    """`bursts` bursts of `burst_size` requests sent at once, one every `interval_s` seconds."""

    kind: Literal["burst"] = "burst"
    burst_size: int = Field(8, ge=1, le=10_000)
    interval_s: float = Field(5.0, gt=0, le=MAX_DURATION_S)
    bursts: int = Field(3, ge=1, le=10_000)
    background_requests_per_s: float = Field(0.0, ge=0, le=MAX_RATE_PER_S)
    max_in_flight: int = Field(256, ge=1, le=100_000)

    def planned_dispatch_s(self) -> float:
        return self.interval_s * self.bursts


class ReplayProfile(_Strict):
    """Replay a JSONL trace: one line per request, `{"timestamp_s": 0.35, "input_tokens": 210,
    "output_tokens": 64}` (or `"messages": [...]` instead of input_tokens). Timestamps are seconds
    (absolute or relative; the first one is time zero), divided by `speedup`."""

    kind: Literal["replay"] = "replay"
    trace: str
    speedup: float = Field(1.0, gt=0, le=10_000)
    max_in_flight: int = Field(256, ge=1, le=100_000)

    def planned_dispatch_s(self) -> float | None:
        return None  # known once the trace is read; arrivals after max_duration_s are not sent


Profile = Annotated[Union[ConcurrencyProfile, RateProfile, SweepProfile, BurstProfile, ReplayProfile],
                    Field(discriminator="kind")]


# ----------------------------------------------------------------------------------- prompt sources
class LengthDistribution(_Strict):
    """Token lengths: `constant` (= mean), `uniform` in [min, max], or `normal` (mean, std) clipped to [min, max]."""

    dist: Literal["constant", "uniform", "normal"] = "constant"
    mean: int = Field(128, ge=1, le=1_000_000)
    std: float = Field(0.0, ge=0)
    min: int | None = Field(None, ge=1)
    max: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "LengthDistribution":
        lo = self.min if self.min is not None else 1
        hi = self.max if self.max is not None else None
        if hi is not None and lo > hi:
            raise ValueError(f"min ({lo}) is greater than max ({hi})")
        if self.dist == "uniform" and (self.min is None or self.max is None):
            raise ValueError("dist=uniform needs both 'min' and 'max'")
        return self


class SyntheticPrompts(_Strict):
    """Generated prompts of about `input_tokens` tokens (common English words, ~1 token each; the server's
    usage reports the exact count) and `output_tokens` output tokens, forced with ignore_eos/min_tokens
    when `force_output_tokens` (vLLM supports both; other servers may ignore them)."""

    kind: Literal["synthetic"] = "synthetic"
    input_tokens: LengthDistribution = Field(default_factory=lambda: LengthDistribution(mean=128))
    output_tokens: LengthDistribution = Field(default_factory=lambda: LengthDistribution(mean=64))
    force_output_tokens: bool = True
    unique_prompts: int = Field(512, ge=1, le=100_000)


class SuitePrompts(_Strict):
    """The prompts of a task suite (packager.evaluate.suite.load_suite: 'default', 'behaviour' or a JSONL path)."""

    kind: Literal["suite"] = "suite"
    suite: str = "default"


class JsonlPrompts(_Strict):
    """A JSONL file of OpenAI chat requests, one per line: `{"messages": [...], "max_tokens": 64, ...}`.
    Sampling fields (temperature, top_p, seed, stop, ...) are sent as given; model/stream are set by packager."""

    kind: Literal["jsonl"] = "jsonl"
    path: str


class _TurnOptions(_Strict):
    """How conversations become requests (ConversationPrompts, and HfDatasetPrompts' conversation columns)."""

    multi_turn: bool = False  # one request per user turn, the recorded history before it (else: the first turn)
    max_turns: int | None = Field(None, ge=1, le=10_000)  # multi-turn: the first max_turns user turns of each
    max_tokens_from_data: bool = True  # max_tokens = the recorded answer's length in words (1..output_cap)
    output_cap: int = Field(1024, ge=1, le=1_000_000)  # max_tokens when not from data or there is no answer


class ConversationPrompts(_TurnOptions):
    """Recorded conversations, one JSON object per line (or one JSON array of them): ShareGPT
    `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}` (from: human,
    user, gpt, assistant or system) or OpenAI `{"messages": [{"role": "user", "content": "..."}]}`.
    Single-turn: one request per conversation, its first user turn (after its leading system turns).
    Multi-turn: one request per user turn, whose messages are the conversation up to that turn with the
    *recorded* assistant answers as history; a conversation's requests are consecutive in the pool.
    Conversations without a user turn are skipped and counted."""

    kind: Literal["conversations"] = "conversations"
    path: str
    max_conversations: int | None = Field(None, ge=1, le=10_000_000)


class HfDatasetPrompts(_TurnOptions):
    """A Hugging Face dataset read from the LOCAL cache only (HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1; nothing is
    downloaded at run time), or a local dataset directory. `column`: a text column (the user message) or a
    messages/conversations column (handled as ConversationPrompts); None: the first of messages, conversations,
    prompt, instruction, question, text. Text rows get max_tokens = output_cap."""

    kind: Literal["hf"] = "hf"
    dataset: str = Field(min_length=1)
    split: str = Field("train", min_length=1)
    config_name: str | None = None
    column: str | None = None
    max_rows: int | None = Field(None, ge=1, le=10_000_000)


PromptSource = Annotated[Union[SyntheticPrompts, SuitePrompts, JsonlPrompts, ConversationPrompts, HfDatasetPrompts],
                         Field(discriminator="kind")]


# ---------------------------------------------------------------------------------- capacity search
class KneeSearch(_Strict):
    """After a sweep, the capacity at the SLO (the knee) by bisection: between the highest step that met the
    SLOs and the lowest that did not, each probe a run of `probe_duration_s` at one load, until the two are
    within `precision` of the knee (at least 1 user apart for concurrency), `max_probes` ran, or the probes'
    dispatch time would pass `budget_s`. With `guided` the probes are placed by interpolation rather than at the
    midpoint (see packager.loadtest.knee). When every step met the SLOs the search first doubles the load, up to
    `extend_factor` times the highest step (1: never above the sweep). The result is priced at the knee, and the
    sweep plot marks it."""

    enabled: bool = False
    precision: float = Field(0.1, gt=0, le=1.0)
    budget_s: float = Field(120.0, gt=0, le=MAX_DURATION_S)
    probe_duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S)  # None: the sweep's step_duration_s
    max_probes: int = Field(6, ge=1, le=64)
    extend_factor: float = Field(4.0, ge=1.0, le=64.0)
    # guided: each probe goes where the bracket's two ends put the knee (their SLO ratios interpolated), at
    # least a precision step from either end, so a good estimate closes the bracket in two probes; after two guided
    # probes in a row on one side of the knee the search bisects. False: plain bisection (the midpoint each time).
    guided: bool = True
    # In a release: a variant its evaluation already rejects (the quality gate) gets its sweep but no search, since
    # it cannot be recommended at any load. False: search every variant. `packager loadtest` has no gate.
    only_passing: bool = True


# ------------------------------------------------------------------------------------------ config
class LoadTestConfig(_Strict):
    profile: Profile = Field(default_factory=ConcurrencyProfile)
    prompts: PromptSource = Field(default_factory=SyntheticPrompts)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)  # overrides every request's max_tokens
    temperature: float | None = Field(None, ge=0, le=2)  # None: the request's own, else the server default
    max_duration_s: float = Field(300.0, gt=0, le=MAX_DURATION_S)
    max_requests: int = Field(10_000, ge=1, le=10_000_000)
    drain_timeout_s: float = Field(60.0, ge=0, le=3600)
    request_timeout_s: float = Field(120.0, gt=0, le=3600)
    workers: int = Field(0, ge=0, le=64)  # 0: one locust process; N: a master and N local worker processes
    seed: int = 0
    slo_attainment_target: float = Field(0.9, gt=0, le=1.0)  # a sweep step meets the SLOs when this
    # fraction of its requests (failed and dropped ones count as missing) meets every SLO
    utilisation_fraction: float = Field(1.0, gt=0, le=1.0)  # share of paid hours the server runs at the load
    generator_cpu_limit_fraction: float = Field(0.8, gt=0, le=1.0)  # above: the generator may be the bottleneck
    # Requests started within the first warmup_s seconds of each phase are sent and recorded but left out of
    # its figures (connection pools, caches and the server's own warm-up); must be shorter than every phase.
    warmup_s: float = Field(0.0, ge=0, le=600)
    # Closed loop: the users of a phase start evenly spread over this share of it (user i of N at i/N of the
    # ramp), not all at once; each user's first request is its warm-up, and the phase's rates are read after the
    # ramp, while all N are in (packager.loadtest.metrics.summarize_phase). Users that start together queue
    # their prompts together: on 2 cores llama-server prefills a 128-token prompt in about 0.2 s, so that queue,
    # not the steady state of N users, decided a 10 s probe's TTFT p95 (benchmarks/results/ramp.json).
    # 0: every user starts at the phase's start and every request is judged.
    ramp_fraction: float = Field(0.25, ge=0, lt=1)
    # chat: /v1/chat/completions; completion: the messages as one raw prompt to /v1/completions (a base model
    # without a chat template); auto: asks the target once (a one-token chat request) which it takes.
    prompt_format: Literal["auto", "chat", "completion"] = "auto"
    # Seconds between scrapes of the target's /metrics during the run (KV cache, queue, preemptions, busy slots
    # per phase in the result); 0: none.
    telemetry_interval_s: float = Field(1.0, ge=0, le=60)
    knee: KneeSearch = Field(default_factory=KneeSearch)
    # The first request is the pool's entry at this index (a capacity-search probe starts after the requests the sweep
    # and the probes before it sent: a server with a prompt or prefix cache has not seen them)
    pool_offset: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "LoadTestConfig":
        planned = self.profile.planned_dispatch_s()
        if planned is not None and planned > self.max_duration_s + 1e-9:
            raise ValueError(
                f"the {self.profile.kind} profile dispatches for {planned:g} s, more than max_duration_s="
                f"{self.max_duration_s:g} s; shorten the profile or raise max_duration_s")
        phase_s = getattr(self.profile, "step_duration_s", None) or getattr(self.profile, "duration_s", None)
        if self.warmup_s and phase_s is not None and self.warmup_s >= phase_s:
            raise ValueError(f"warmup_s={self.warmup_s:g} s leaves nothing of each {phase_s:g} s phase to measure; "
                             "make it shorter than the phase")
        if self.knee.enabled:
            if not isinstance(self.profile, SweepProfile):
                raise ValueError(f"knee.enabled searches between the steps of a sweep; the {self.profile.kind} "
                                 "profile has none (use kind: sweep, or set knee.enabled: false)")
            probe_s = self.knee.probe_duration_s or self.profile.step_duration_s
            if self.warmup_s >= probe_s:
                raise ValueError(f"warmup_s={self.warmup_s:g} s leaves nothing of a {probe_s:g} s knee probe to "
                                 "measure; make knee.probe_duration_s longer")
            if probe_s > self.knee.budget_s:
                raise ValueError(f"knee.budget_s={self.knee.budget_s:g} s is shorter than one {probe_s:g} s probe")
        return self


def parse_loadtest_config(data: dict | None, where: str = "loadtest configuration") -> LoadTestConfig:
    """Validate RunConfig.loadtest (a dict); raise ConfigError listing every bad field."""
    return parse_model(LoadTestConfig, data or {}, where)
