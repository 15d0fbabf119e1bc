"""Scrape a Prometheus `/metrics` endpoint and do the maths Prometheus would do, as pure functions.

`parse_metrics_text` reads the Prometheus text exposition format (with
`prometheus_client.parser.text_string_to_metric_families`) into a `Scrape`: every sample indexed by its
sample name (`packager_ttft_seconds_bucket`, `vllm:generation_tokens_total`, ...) and label set.

The maths mirrors PromQL where PromQL has a definition:

* `histogram_quantile(q, buckets)` is Prometheus's `bucketQuantile`: find the bucket holding rank q*N and
  interpolate linearly inside it; a quantile in the +Inf bucket returns the largest finite upper bound.
* `counter_increase(prev, cur)` treats a decrease as a counter reset (the process restarted), like
  `increase()`; rates between two scrapes are increase / elapsed seconds, without Prometheus's
  extrapolation to the window edges (two scrapes have no edges to extrapolate to).
* `usd_per_million_output_tokens(usd_per_hour, output_tokens_per_s)` is the cost model of \
docs/architecture.md (Metrics):
  hourly price / (output tokens per second x 3600) x 1e6.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

from packager.errors import PackagerError

LabelSet = tuple[tuple[str, str], ...]
# A label matcher: a value the label must equal, a collection it must be in, or a predicate it must pass.
LabelMatch = Mapping[str, Union[str, Iterable[str], Callable[[str], bool]]]


class ScrapeError(PackagerError):
    """A metrics endpoint could not be reached, or what it answered is not Prometheus text."""


def labelset(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


@dataclass
class Scrape:
    """One read of a `/metrics` page: samples by sample name, then by label set; family types by name."""

    url: str
    taken_at_s: float  # unix time of the read
    samples: dict[str, dict[LabelSet, float]] = field(default_factory=dict)
    family_types: dict[str, str] = field(default_factory=dict)

    def has_family(self, name: str) -> bool:
        """True when the page declares the metric family (even before its first sample) or has samples of it."""
        return name in self.family_types or any(
            n == name or n.startswith(name + "_") for n in self.samples)

    def series(self, name: str, match: LabelMatch | None = None) -> dict[LabelSet, float]:
        """Samples named `name` whose labels match: a string must equal, a collection must contain the value."""
        out: dict[LabelSet, float] = {}
        for ls, v in self.samples.get(name, {}).items():
            if match and not _matches(dict(ls), match):
                continue
            out[ls] = v
        return out

    def total(self, name: str, match: LabelMatch | None = None) -> float | None:
        """Sum of the matching samples; None when there is none."""
        s = self.series(name, match)
        return sum(s.values()) if s else None

    def label_values(self, name: str, label: str) -> list[str]:
        return sorted({dict(ls).get(label, "") for ls in self.samples.get(name, {})} - {""})


def _matches(labels: Mapping[str, str], match: LabelMatch) -> bool:
    for k, want in match.items():
        got = labels.get(k)
        if isinstance(want, str):
            if got != want:
                return False
        elif callable(want):
            if got is None or not want(got):
                return False
        elif got not in set(want):
            return False
    return True


def parse_metrics_text(text: str, url: str = "", taken_at_s: float | None = None) -> Scrape:
    """Parse Prometheus text exposition format. Raises ScrapeError naming the URL when it is not."""
    from prometheus_client.parser import text_string_to_metric_families

    scrape = Scrape(url=url, taken_at_s=time.time() if taken_at_s is None else taken_at_s)
    try:
        for fam in text_string_to_metric_families(text):
            scrape.family_types[fam.name] = fam.type
            for s in fam.samples:
                scrape.samples.setdefault(s.name, {})[labelset(s.labels)] = float(s.value)
    except (ValueError, TypeError, IndexError) as e:
        first = text.strip().splitlines()[0][:120] if text.strip() else "(empty)"
        raise ScrapeError(
            f"{url or 'The metrics page'} is not in Prometheus text format ({e}); it starts with {first!r}. "
            "Point at the endpoint's /metrics (a packager bento or a vLLM OpenAI server)."
        ) from None
    return scrape


def metrics_url(url: str) -> str:
    """`http://host:3000` -> `http://host:3000/metrics`; a URL already ending in /metrics is kept."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise ScrapeError(f"Endpoint URL {url!r} must start with http:// or https:// (for example http://127.0.0.1:3000).")
    return u if u.endswith("/metrics") else u + "/metrics"


def scrape_client():
    """An httpx client for scrapes seconds apart: no pooled connection is kept between them (`Connection:
    close`). Reusing one that the server closed on its keep-alive timeout (uvicorn's is 5 s, as close to a
    scrape interval as it gets) races the server's close."""
    import httpx

    from packager.core.access import http_options
    from packager.serve.auth import load_metrics_token

    opts = http_options()  # the client's key, extra headers and TLS verification (packager.core.access)
    token = load_metrics_token()  # PACKAGER_METRICS_TOKEN: a bento's /metrics may ask for it instead of the key
    if token:
        opts["headers"]["Authorization"] = f"Bearer {token}"
    opts["headers"]["Connection"] = "close"
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), **opts)


def fetch_metrics(url: str, timeout_s: float = 10.0, client=None) -> Scrape:
    """GET `url` (the endpoint's base URL or its /metrics URL) and parse it. `timeout_s` bounds the whole
    read, not only each wait for bytes: a page that trickles in is a failed scrape, not a hung monitor."""
    import httpx

    murl = metrics_url(url)
    taken = time.time()
    deadline = time.monotonic() + timeout_s
    own = client is None
    c = scrape_client() if own else client
    try:
        with c.stream("GET", murl, timeout=timeout_s) as r:
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if time.monotonic() > deadline:
                    raise ScrapeError(f"{murl} did not send its whole page within {timeout_s:g} s "
                                      f"({len(body)} bytes so far). Is the endpoint overloaded?")
            status = r.status_code
    except httpx.HTTPError as e:
        raise ScrapeError(f"Could not read {murl}: {type(e).__name__}: {e}. "
                          "Is the endpoint running and the URL right?") from None
    finally:
        if own:
            c.close()
    text = body.decode("utf-8", errors="replace")
    if status != 200:
        raise ScrapeError(f"{murl} answered HTTP {status}: {text[:200]!r}. Expected the Prometheus metrics page.")
    return parse_metrics_text(text, url=murl, taken_at_s=taken)


# ---------------------------------------------------------------------------------------------- maths


def counter_increase(prev: float | None, cur: float) -> float:
    """Increase of one counter series between two reads. A decrease is a reset: the whole current value
    is the increase (as PromQL `increase`). A series absent before counts from zero (it was created, at
    zero, after the first read: prometheus-client creates labelled children on first use)."""
    if prev is None:
        return cur
    return cur - prev if cur >= prev else cur


def series_increase(prev: Mapping[LabelSet, float], cur: Mapping[LabelSet, float]) -> float:
    """Sum over series of `counter_increase`; series that vanished contribute nothing."""
    return sum(counter_increase(prev.get(ls), v) for ls, v in cur.items())


def rate_per_s(increase: float, elapsed_s: float) -> float:
    if elapsed_s <= 0:
        raise ValueError(f"elapsed_s must be > 0, got {elapsed_s}")
    return increase / elapsed_s


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus's `histogram_quantile` on classic buckets: (upper bound, cumulative count) pairs.

    Returns NaN when there are fewer than two buckets, no +Inf bucket, or no observations; -Inf/+Inf for
    q < 0 / q > 1 (as PromQL). Bucket counts that decrease with the bound (possible when buckets of
    different scrapes are mixed) are raised to stay monotonic, as Prometheus does.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for ub, c in buckets:
        merged[float(ub)] = merged.get(float(ub), 0.0) + float(c)
    bs = sorted(merged.items())
    if len(bs) < 2 or not math.isinf(bs[-1][0]):
        return math.nan
    # ensure monotonic cumulative counts
    fixed: list[tuple[float, float]] = []
    running = -math.inf
    for ub, c in bs:
        running = max(running, c)
        fixed.append((ub, running))
    bs = fixed
    observations = bs[-1][1]
    if observations == 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    b = next(i for i, (_, c) in enumerate(bs) if c >= rank)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    bucket_start = 0.0
    bucket_end, count = bs[b]
    if b > 0:
        bucket_start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    if count == 0:  # only q == 0 with an empty first bucket: 0/0, NaN in Prometheus too
        return math.nan
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


def _le(ls: LabelSet) -> float:
    le = dict(ls).get("le")
    if le is None:
        raise ScrapeError(f"A histogram bucket sample has no 'le' label: {dict(ls)}.")
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def histogram_buckets(series: Mapping[LabelSet, float]) -> list[tuple[float, float]]:
    """`sum by (le)` of `<name>_bucket` samples: (upper bound, cumulative count) sorted by bound."""
    out: dict[float, float] = {}
    for ls, v in series.items():
        ub = _le(ls)
        out[ub] = out.get(ub, 0.0) + v
    return sorted(out.items())


def histogram_buckets_increase(prev: Mapping[LabelSet, float],
                               cur: Mapping[LabelSet, float]) -> list[tuple[float, float]]:
    """`sum by (le) (increase(<name>_bucket))` between two reads, reset-aware per series."""
    out: dict[float, float] = {}
    for ls, v in cur.items():
        ub = _le(ls)
        out[ub] = out.get(ub, 0.0) + counter_increase(prev.get(ls), v)
    return sorted(out.items())


def usd_per_million_output_tokens(usd_per_hour: float | None, output_tokens_per_s: float | None) -> float | None:
    """Hourly price / (output tokens per second x 3600) x 1e6; None without a price or without output."""
    if usd_per_hour is None or output_tokens_per_s is None or output_tokens_per_s <= 0:
        return None
    if usd_per_hour < 0:
        raise ValueError(f"usd_per_hour must be >= 0, got {usd_per_hour}")
    return usd_per_hour / (output_tokens_per_s * 3600.0) * 1e6


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)
