"""`packager release` end to end in seconds: the real loop, step cache, evaluation (through the OpenAI fake), a
real locust load test (against the fake), the error path, the time budget and the report. Only what needs a
real engine or real compression is replaced: the recipe (a tiny fake checkpoint with a manifest), the bento build
and `bentoml serve` or the bare engine (a fake OpenAI server per variant, with its own latencies), and the model
registry (an in-memory fake that records its calls).

The main scenario (one module fixture, three runs of the same run directory):
  1. baseline (4 tokens per answer: every item scores 1), w8a8-int8 (the same answers, served faster),
     broken-int4 (its server answers every request with HTTP 500: its evaluation fails, the run goes on; the time
     budget is spent while it runs), late-fp8 (skipped: no budget left);
  2. the same again: every finished step comes from the cache, the failed variant is tried again;
  3. a changed evaluation setting, served on the bare engine, without the registry: only the evaluations are
     redone, the load tests still come from the cache.
"""
from __future__ import annotations

import os

import contextlib
import hashlib
import io
import json
import re
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from fakes.fake_openai import FakeOpenAIServer
from packager.config import RunConfig, dump_config
from packager.fsutil import read_manifest, write_manifest

BUDGET_S = 600.0
USD_PER_HOUR = 0.5
RECIPES = ["w8a8-int8", "broken-int4", "late-fp8"]
MEASURED = ["baseline", "w8a8-int8"]
SERVER_SETTINGS = {  # per variant: what its server answers and how fast
    "baseline": {"ttft_ms": 20, "itl_ms": 5, "output_tokens": 4},
    "w8a8-int8": {"ttft_ms": 5, "itl_ms": 1, "output_tokens": 4},
    "broken-int4": {"fail_every_n": 1},
}
STAGE_WALL_S = 1.5
SKIP_MSG = f"skipped: the time budget of {BUDGET_S:.0f} s was spent before this variant"
REUSED = "evaluation and load test reused from the cache"
IGNORED = {"meets_quality_floor", "meets_slo"}  # set by recommend(), after variant.json is written


# ---------------------------------------------------------------------------------------------- inputs

def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A valid float32 safetensors file (zeros) holding these tensors."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + bytes(offset))


def fake_checkpoint(d: Path, shapes: dict[str, list[int]], name: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    write_safetensors(d / "model.safetensors", shapes)
    write_manifest(d, {"name": name})
    return d


def write_suite(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path


def make_inputs(tmp: Path) -> SimpleNamespace:
    model = fake_checkpoint(tmp / "model", {"w": [8, 8], "b": [8]}, "tiny-fake")  # 72 parameters
    suite = write_suite(tmp / "suite.jsonl", [
        {"id": f"q{i}", "prompt": f"Say tok four times ({i}).", "reference": "tok tok tok tok", "scorer": "f1",
         "tags": ["echo" if i % 2 else "repeat"]} for i in range(6)])
    behaviour = write_suite(tmp / "behaviour.jsonl", [
        {"id": f"b{i}", "prompt": f"Paraphrase {i}: say tok.", "reference": "tok", "scorer": "contains",
         "tags": ["consistency", "group:g1"]} for i in range(2)])
    return SimpleNamespace(model=model, suite=suite, behaviour=behaviour, tmp=tmp)


@pytest.fixture
def inputs(tmp_path):
    return make_inputs(tmp_path)


def make_cfg(inputs, **over) -> RunConfig:
    data = {
        "model": str(inputs.model), "recipes": RECIPES, "output_dir": str(inputs.tmp / "run"),
        "eval": {"suite": str(inputs.suite), "behaviour_suite": str(inputs.behaviour), "perplexity": False,
                 "concurrency": 4},
        "loadtest": {"profile": {"kind": "concurrency", "users": 2, "duration_s": 1},
                     "prompts": {"kind": "synthetic", "input_tokens": {"mean": 8}, "output_tokens": {"mean": 4}},
                     "max_duration_s": 10, "drain_timeout_s": 5},
        "pricing": {"instance": None, "usd_per_hour": USD_PER_HOUR},
        "registry": {"name": "tiny-release"},
        "quality_floor": 0.9, "time_budget_s": BUDGET_S,
        # the fake server gives no prompt logprobs; the noise floor step has tests of its own
        "gate": {"noise_floor": False},
    }
    data.update(over)
    return RunConfig.model_validate(data)


# ---------------------------------------------------------------------------------------------- fakes

class Fakes:
    """Every replaced boundary, and what each was asked to do (calls[kind]: one dict per call, with "name")."""

    KINDS = ("run_recipe", "build", "serve", "stop", "evaluate", "loadtest", "register", "results")

    def __init__(self):
        self.calls: dict[str, list[dict]] = {k: [] for k in self.KINDS}
        self.registry = FakeRegistry(self)

    def take(self) -> dict[str, list[dict]]:
        """The calls so far (cleared)."""
        out = {k: list(v) for k, v in self.calls.items()}
        for v in self.calls.values():
            v.clear()
        return out


def names(calls: dict[str, list[dict]], kind: str) -> list[str]:
    return [c["name"] for c in calls[kind]]


class FakeRegistry:
    uri = "fake://registry"

    def __init__(self, fakes: Fakes):
        self.fakes = fakes
        self.versions = 0

    def register_variant(self, *args, **kw):
        self.versions += 1
        self.fakes.calls["register"].append({**_record_fields(args, kw), "version": self.versions})
        return self.versions

    def update_results(self, name, version, **kw):
        self.fakes.calls["results"].append({"name": name, "version": version, **kw})


def _record_fields(args, kw) -> dict:
    """register_variant(name, model_dir, **fields) today; one record object (its fields) later."""
    if len(args) == 1 and not kw and not isinstance(args[0], str):
        rec = args[0]
        return dict(rec.model_dump() if hasattr(rec, "model_dump") else vars(rec))
    return {"name": args[0], "model_dir": args[1], **kw}


class FakeServer:
    """A started variant server (bento or bare engine): the OpenAI fake with the variant's settings."""

    def __init__(self, fakes: Fakes, name: str, **record):
        self.fakes, self.name, self.record = fakes, name, record
        self.srv = FakeOpenAIServer(**SERVER_SETTINGS[name])
        self.base_url = None
        # a bento has a key of its own, which the release's clients send (the fake server does not check it)
        self.api_key = f"key-of-{name}-0123456789" if record.get("via") == "bento" else None

    def start(self):
        self.fakes.calls["serve"].append({"name": self.name, **self.record})
        self.base_url = self.srv.start().base_url
        return self

    def stop(self):
        self.fakes.calls["stop"].append({"name": self.name})
        self.srv.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def install_fakes(mp: pytest.MonkeyPatch) -> Fakes:
    import packager.compress.recipe as recipe_mod
    import packager.engines.select as select_mod
    import packager.evaluate.runner as eval_mod
    import packager.loadtest.runner as lt_mod
    import packager.serve.build as build_mod
    import packager.serve.server as server_mod
    from packager.registry.store import ModelRegistry

    f = Fakes()

    def run_recipe(source, recipe, out_root, **kw):
        """Like the real one: a content-keyed output that a rerun finds again (its own stage cache)."""
        f.calls["run_recipe"].append({"name": recipe, "source": source.digest, **kw})
        final = Path(out_root) / "final"
        if read_manifest(final) is None:
            fake_checkpoint(final, {"w": [8, 4]}, f"tiny-fake-{recipe}")
        stage = SimpleNamespace(model_dump=lambda mode: {"kind": recipe, "wall_time_s": STAGE_WALL_S})
        return SimpleNamespace(stages=[stage], final_dir=str(final))

    def build_bento(model_dir, **kw):
        f.calls["build"].append({"model_dir": str(model_dir), **kw, "bento_name": kw["name"], "name": kw["model_name"]})
        return SimpleNamespace(bento_tag=f"packager-{kw['model_name']}:fake")

    def bento_server(tag, log_path, startup_timeout_s):
        return FakeServer(f, tag.split(":")[0].removeprefix("packager-"), via="bento", log=Path(log_path).name)

    def server_for_model(model_dir, engine, served_name=None, log_path=None):
        Path(log_path).open("w").close()  # as a real engine opens its log at start: the folder must exist
        return FakeServer(f, served_name, via="engine", model_dir=str(model_dir), log=Path(log_path).name)

    real_evaluate, real_loadtest = eval_mod.evaluate_model, lt_mod.run_loadtest

    def evaluate_model(*a, **kw):
        f.calls["evaluate"].append({"name": kw["name"], "out": Path(kw["out_dir"]).name,
                                    "corpus": a[1].eval.fidelity_corpus, "perplexity": a[1].eval.perplexity,
                                    "client_key": os.environ.get("PACKAGER_API_KEY")})
        return real_evaluate(*a, **kw)

    def run_loadtest(url, *a, **kw):
        f.calls["loadtest"].append({"name": Path(a[3]).parent.name, "client_key": os.environ.get("PACKAGER_API_KEY")})
        return real_loadtest(url, *a, **kw)

    mp.setattr(recipe_mod, "load_recipe", lambda name: name)
    mp.setattr(recipe_mod, "run_recipe", run_recipe)
    mp.setattr(build_mod, "build_bento", build_bento)
    mp.setattr(server_mod, "BentoServer", bento_server)
    mp.setattr(select_mod, "server_for_model", server_for_model)
    mp.setattr(eval_mod, "evaluate_model", evaluate_model)
    mp.setattr(lt_mod, "run_loadtest", run_loadtest)
    mp.setattr(ModelRegistry, "from_config", classmethod(lambda cls, cfg: f.registry))
    return f


@pytest.fixture
def fakes(monkeypatch):
    return install_fakes(monkeypatch)


def spend_budget_during(mp: pytest.MonkeyPatch, name: str) -> None:
    """The whole time budget passes while variant `name` is compressed (the run's clock is moved on by it)."""
    from packager.release import steps

    real = steps.compress

    def compress(ctx):
        real(ctx)
        if ctx.v.name == name:
            ctx.run.t0 -= ctx.run.cfg.time_budget_s

    mp.setattr(steps, "compress", compress)


def cache_key(*parts) -> str:
    """The step cache's key, derived independently: a rerun of an existing run directory must find its files."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def done(run: Path, variant: str, step: str) -> dict:
    return json.loads((run / "variants" / variant / f"{step}.done.json").read_text())


def release(cfg: RunConfig, **kw) -> SimpleNamespace:
    """run_release with the real console (stderr captured): its report, console lines and the fakes' calls."""
    from packager.release import run_release

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        report = run_release(cfg, show_progress=False, **kw)
    return SimpleNamespace(report=report, lines=[ln for ln in err.getvalue().splitlines() if ln.strip()])


def json_report(report, out_dir) -> dict[str, Path]:
    from packager.report.render import REPORT_FILES, to_json

    p = Path(out_dir) / REPORT_FILES["json"]
    p.write_text(to_json(report))
    return {"json": p}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import packager.report.render as render_mod

    with pytest.MonkeyPatch.context() as mp:
        f = install_fakes(mp)
        spend_budget_during(mp, "broken-int4")
        inputs = make_inputs(tmp_path_factory.mktemp("release"))
        cfg = make_cfg(inputs)
        first = release(cfg)
        first.calls = f.take()
        mp.setattr(render_mod, "write_report", json_report)  # the reruns: report.json only (rendering takes seconds)
        # the reruns work on copies of the run directory: the first run's files stay as it left them
        run = Path(cfg.output_dir)
        cfg2 = cfg.model_copy(update={"output_dir": str(run.with_name("rerun"))})
        shutil.copytree(run, cfg2.output_dir)
        second = release(cfg2)
        second.calls, second.cfg = f.take(), cfg2
        cfg3 = make_cfg(inputs, eval={**cfg.eval.model_dump(), "max_items": 4}, output_dir=str(run.with_name("engine")))
        shutil.copytree(run, cfg3.output_dir)
        third = release(cfg3, serve_via="engine", register=False)
        third.calls, third.cfg = f.take(), cfg3
    return SimpleNamespace(inputs=inputs, cfg=cfg, run=run, first=first, second=second, third=third)


# ---------------------------------------------------------------------------------------------- the main scenario

def test_report_of_the_first_run(runs):
    from packager.report.model import Report

    report, run = runs.first.report, runs.run
    assert [v.name for v in report.variants] == ["baseline", *RECIPES]
    assert (run / "config.yaml").read_text() == dump_config(runs.cfg)
    assert report.model == "tiny-fake" and report.baseline == "baseline" and report.quality_floor == 0.9
    assert report.slo == {"ttft_ms": 2000.0, "tpot_ms": 250.0} and report.time_budget_s == BUDGET_S
    assert report.pricing == {"instance": None, "usd_per_hour": USD_PER_HOUR,
                              "source": "given explicitly (usd_per_hour)"}
    assert report.config == runs.cfg.model_dump(mode="json")
    assert report.notes == [f"late-fp8 {SKIP_MSG}"]
    # the recommendation: the cheaper of the two variants that keep quality and SLO; both on the frontier or
    # the cheaper one dominating (the same score)
    base, w8 = report.variants[:2]
    cheaper = min((base, w8), key=lambda v: v.load.usd_per_million_output_tokens)
    assert report.recommendation.variant == cheaper.name and report.pareto[0] == cheaper.name
    assert report.engines is None  # one engine
    # written: JSON (the same report), Markdown, HTML
    assert Report.model_validate_json((run / "report.json").read_text()) == report
    md = (run / "report.md").read_text()
    assert md.startswith("# ") and "broken-int4" in md and "late-fp8" in md
    assert "<html" in (run / "report.html").read_text()


def test_measured_variants(runs):
    base, w8 = runs.first.report.variants[:2]
    src = runs.inputs.model
    from packager.hardware import serving_dtype

    # dtype auto, reported as the engine was started on this machine
    assert base.is_baseline and base.recipe is None and base.engine == "vllm"
    assert base.dtype == serving_dtype("auto", "cpu") and base.dtype in ("bfloat16", "float32")
    assert base.model_dir == str(src.resolve()) and base.model_digest == read_manifest(src)["digest"]
    assert base.size_bytes == (src / "model.safetensors").stat().st_size and base.parameters == 72
    assert base.stages == [] and base.compression_wall_time_s is None
    assert base.score == 1.0 and base.recovery == 1.0 and base.score_by_category == {"echo": 1.0, "repeat": 1.0}
    assert base.behaviour == {"consistency": 1.0, "consistency_accuracy": 1.0, "behaviour_score": 1.0}
    assert base.eval["n_items"] == 6 and base.eval["n_errors"] == 0 and base.eval["served_model"] == "fake-model"
    assert not {"config", "versions", "platform"} & set(base.eval)
    assert (base.bento_tag, base.registry_name, base.registry_version) == (
        "packager-baseline:fake", "tiny-release", "1")

    w8_dir = runs.run / "variants" / "w8a8-int8" / "stages" / "final"
    assert w8.recipe == "w8a8-int8" and not w8.is_baseline and w8.model_dir == str(w8_dir)
    assert w8.model_digest == read_manifest(w8_dir)["digest"] and w8.parameters == 32
    assert w8.stages == [{"kind": "w8a8-int8", "wall_time_s": STAGE_WALL_S}]
    assert w8.compression_wall_time_s == STAGE_WALL_S
    assert w8.score == 1.0 and w8.recovery == 1.0 and w8.fidelity_agreement == 1.0
    assert w8.eval["baseline_name"] == "baseline" and w8.eval["baseline_score"] == 1.0
    assert (w8.bento_tag, w8.registry_name, w8.registry_version) == (
        "packager-w8a8-int8:fake", "tiny-release", "2")
    for v in (base, w8):  # a real locust run against the variant's own server, priced
        assert v.errors == [] and v.meets_quality_floor is True and v.meets_slo is True
        assert v.load is not None and v.load.requests > 0 and v.load.errors == 0
        assert v.load.output_tokens_per_s > 0 and v.load.usd_per_hour == USD_PER_HOUR
        assert v.load.ttft_ms_p50 >= SERVER_SETTINGS[v.name]["ttft_ms"]
        assert v.load.usd_per_million_output_tokens == pytest.approx(
            USD_PER_HOUR / (v.load.output_tokens_per_s * 3600) * 1e6, rel=1e-6)
    for name, v in zip(["baseline", *RECIPES[:2]], runs.first.report.variants):
        assert json.loads((runs.run / "variants" / name / "variant.json").read_text()) == json.loads(
            v.model_copy(update=dict.fromkeys(IGNORED)).model_dump_json())


def test_failed_and_skipped_variants(runs):
    broken, late = runs.first.report.variants[2:]
    # the failed variant: its error in the report, registered (before it failed), nothing measured
    assert len(broken.errors) == 1 and broken.errors[0].startswith("Every request to http://127.0.0.1:")
    assert "answered HTTP 500" in broken.errors[0]
    assert broken.score is None and broken.load is None and broken.bento_tag is None
    assert broken.registry_version == "3" and broken.compression_wall_time_s == STAGE_WALL_S
    assert sorted(p.name for p in (runs.run / "variants" / "broken-int4").glob("*.done.json")) == [
        "register.done.json"]
    # the skipped variant: named, with why, in the variant and the notes; no work, no file
    assert late.errors == [SKIP_MSG] and late.model_dir is None and late.registry_version is None
    assert list((runs.run / "variants" / "late-fp8").iterdir()) == []
    assert "late-fp8" not in {n for calls in (runs.first.calls, runs.second.calls) for k in calls
                              for n in names(calls, k)}


def test_timings_of_the_first_run(runs):
    steps = ("build", "serve_start", "evaluate", "evaluate_behaviour", "loadtest", "register")
    assert set(runs.first.report.timings_s) == {
        *(f"{n}/{s}" for n in MEASURED for s in steps), "w8a8-int8/compress",
        *(f"broken-int4/{s}" for s in ("compress", "register", "build", "serve_start", "evaluate")), "total"}
    assert all(v >= 0 for v in runs.first.report.timings_s.values())
    assert runs.first.report.timings_s["total"] >= BUDGET_S  # the budget was spent (the clock moved on by it)


def test_what_the_first_run_did(runs):
    calls = runs.first.calls
    assert names(calls, "run_recipe") == ["w8a8-int8", "broken-int4"]
    assert {c["engine"] == runs.cfg.engine and c["evaluate"] is None for c in calls["run_recipe"]} == {True}
    # every server started was stopped, the broken one too
    assert names(calls, "build") == names(calls, "serve") == names(calls, "stop") == ["baseline", *RECIPES[:2]]
    assert {c["via"] for c in calls["serve"]} == {"bento"} and {c["log"] for c in calls["serve"]} == {"bento.log"}
    assert [(c["name"], c["out"]) for c in calls["evaluate"]] == [
        ("baseline", "eval"), ("baseline", "behaviour"), ("w8a8-int8", "eval"), ("w8a8-int8", "behaviour"),
        ("broken-int4", "eval")]
    # the behaviour suite is scored alone: no perplexity, and no fidelity corpus answered again as if a baseline
    assert {(c["corpus"], c["perplexity"]) for c in calls["evaluate"] if c["out"] == "behaviour"} == {(None, False)}
    assert {c["corpus"] for c in calls["evaluate"] if c["out"] == "eval"} == {"default"}
    assert names(calls, "loadtest") == MEASURED
    # the evaluation and the load test of a bento send that bento's own key, and only while it runs
    assert {(c["name"], c["client_key"]) for c in calls["evaluate"]} == {
        (n, f"key-of-{n}-0123456789") for n in ("baseline", "w8a8-int8", "broken-int4")}
    assert [c["client_key"] for c in calls["loadtest"]] == [f"key-of-{n}-0123456789" for n in MEASURED]
    assert "PACKAGER_API_KEY" not in os.environ
    builds = {c["name"]: c for c in calls["build"]}
    assert [builds[n]["registry_version"] for n in ("baseline", *RECIPES[:2])] == ["1", "2", "3"]
    assert builds["w8a8-int8"]["bento_name"] == "packager-w8a8-int8" and builds["w8a8-int8"]["hardware"] == "cpu"
    assert builds["baseline"]["usd_per_hour"] == USD_PER_HOUR
    regs = calls["register"]
    assert [(r["name"], r["recipe"], r["parent_version"]) for r in regs] == [
        ("tiny-release", None, None), ("tiny-release", "w8a8-int8", "1"), ("tiny-release", "broken-int4", "1")]
    src = runs.inputs.model
    assert regs[1]["source_digest"] == read_manifest(src)["digest"] and regs[1]["source_model"] == str(src)
    assert regs[1]["description"] == "packager release: w8a8-int8"
    assert regs[1]["stage_records"] == [{"kind": "w8a8-int8", "wall_time_s": STAGE_WALL_S}]
    assert regs[1]["run_config"] == runs.cfg.model_dump(mode="json")
    results = calls["results"]
    assert [(r["name"], r["version"]) for r in results] == [("tiny-release", "1"), ("tiny-release", "2")]
    assert results[0]["eval_results"]["score"] == 1.0 and results[0]["behaviour_results"]["behaviour_score"] == 1.0
    assert results[0]["cost_results"] == results[0]["loadtest_results"]["cost"] is not None


def test_step_cache_files_and_keys(runs):
    """One file per finished step, keyed by the content of its inputs (the keys an existing run directory holds)."""
    from packager.evaluate.suite import load_suite
    from packager.loadtest.config import parse_loadtest_config

    cfg, run = runs.cfg, runs.run
    suite_sha = load_suite(str(runs.inputs.suite)).sha256
    lt_cfg = parse_loadtest_config(cfg.loadtest, "loadtest")
    base_score = None  # the baseline's own evaluation has no baseline score in its key
    for v, version in zip(runs.first.report.variants[:2], ("1", "2")):
        name, digest = v.name, v.model_digest
        ev, lt = done(run, name, "evaluate"), done(run, name, "loadtest")
        assert ev["key"] == cache_key("eval", digest, suite_sha, cfg.eval, cfg.engine, base_score, False)
        assert lt["key"] == cache_key("loadtest", digest, lt_cfg, cfg.engine, cfg.slo, cfg.pricing)
        assert ev["result"]["score"] == v.score and lt["result"]["complete"] is True
        assert done(run, name, "bento") == {"key": digest, "result": f"packager-{name}:fake"}
        assert done(run, name, "register") == {
            "key": cache_key("register", FakeRegistry.uri, "tiny-release", digest), "result": version}
        assert done(run, name, "results") == {
            "key": cache_key("results", version, ev["result"]["created_at"], lt["result"]["created_unix"]),
            "result": True}
        base_score = 1.0


def test_console_of_the_first_run(runs):
    out, run = runs.first.lines, runs.run
    broken = runs.first.report.variants[2]
    assert out[0].startswith(f"packager release: model {runs.inputs.model}, variants: baseline + w8a8-int8, "
                             "broken-int4, late-fp8; serving via bento; estimated ")
    # the tiny checkpoint's 72 parameters scale the steps that grow with the weights (the estimate is its own test)
    assert out[0].endswith(f" min (from timings on 2 CPU cores, its compute-bound steps scaled 5.4e-07x from the "
                           f"bundled model's by parameter count; time budget 10 min). Results: {run}")
    assert out[1] == ("The estimate exceeds the time budget: variants that do not fit are skipped and named in the "
                      "report. Raise time_budget_s or drop recipes to run them all.")
    # one line per step that took a second or more (which do is a clock reading: shape and order only)
    step_re = re.compile(r"(\S+): (compress|register|serve, evaluate and load-test|record the results) done in "
                         r"\d+(\.\d)? (s|min)")
    step_lines = [ln for ln in out[2:] if step_re.fullmatch(ln)]
    order = ["baseline", "w8a8-int8", "broken-int4"]
    assert [order.index(step_re.fullmatch(ln).group(1)) for ln in step_lines] == sorted(
        order.index(step_re.fullmatch(ln).group(1)) for ln in step_lines)
    out = [ln for ln in out if ln not in step_lines]
    # one line per finished variant, with the time left (its figures are clock readings: shape only)
    done_lines = [ln for ln in out[2:] if " done in " in ln]
    assert [ln.split(" done in ")[0] for ln in done_lines] == ["baseline", "w8a8-int8", "broken-int4", "late-fp8"]
    for i, ln in enumerate(done_lines, 1):
        assert re.fullmatch(r"\S+ done in \d+\.\d min \(%d/4 variants(; about \d+ min left)?\)" % i, ln), ln
        assert ("min left" in ln) == (i < 4), ln
    assert [ln for ln in out[2:] if " done in " not in ln] == [
        "baseline: bento packager-baseline:fake; starting `bentoml serve` (about 2-3 minutes on 2 cores)",
        "w8a8-int8: bento packager-w8a8-int8:fake; starting `bentoml serve` (about 2-3 minutes on 2 cores)",
        "broken-int4: bento packager-broken-int4:fake; starting `bentoml serve` (about 2-3 minutes on 2 cores)",
        f"broken-int4 failed: {broken.errors[0]}",
        f"report: {run / 'report.json'}, {run / 'report.md'}, {run / 'report.html'}"]
    # library logs go to the run's log file, not the console
    assert (run / "packager.log").is_file()


def test_rerun_reuses_every_finished_step(runs):
    first, second = runs.first.report, runs.second.report
    rerun = Path(runs.second.cfg.output_dir)
    assert [ln for ln in runs.second.lines if REUSED in ln] == [f"baseline: {REUSED}", f"w8a8-int8: {REUSED}"]
    assert sum("starting `bentoml serve`" in ln for ln in runs.second.lines) == 1
    assert [ln for ln in runs.second.lines if " done in " not in ln][-2:] == [
        f"broken-int4 failed: {second.variants[2].errors[0]}", f"report: {rerun / 'report.json'}"]
    # nothing measured or registered again; only the recipe's own stage cache is asked (as always), and the
    # failed variant is tried again (a failure is not cached)
    calls = runs.second.calls
    assert names(calls, "run_recipe") == ["w8a8-int8", "broken-int4"]
    assert names(calls, "build") == names(calls, "serve") == names(calls, "stop") == ["broken-int4"]
    assert names(calls, "evaluate") == ["broken-int4"] and calls["loadtest"] == []
    assert calls["register"] == calls["results"] == []
    # the same figures, from the cache (the bento tag from its own cache entry); the checkpoint in this directory
    for a, b in zip(first.variants[:2], second.variants[:2]):
        assert a.model_dump(exclude={*IGNORED, "model_dir"}) == b.model_dump(exclude={*IGNORED, "model_dir"})
    assert second.variants[1].model_dir == str(rerun / "variants" / "w8a8-int8" / "stages" / "final")
    assert second.variants[2].registry_version == "3" and second.variants[3].errors == [SKIP_MSG]
    assert second.notes == first.notes and second.recommendation.variant == first.recommendation.variant
    assert set(second.timings_s) == {"baseline/register", "w8a8-int8/compress", "w8a8-int8/register",
                                     *(f"broken-int4/{s}" for s in ("compress", "register", "build", "serve_start",
                                                                    "evaluate")), "total"}


def test_changed_setting_on_the_bare_engine_redoes_only_the_evaluation(runs):
    third, cfg3 = runs.third.report, runs.third.cfg
    calls = runs.third.calls
    assert not any(REUSED in ln for ln in runs.third.lines)
    assert runs.third.lines[0].startswith("packager release: model ") and "serving via engine" in runs.third.lines[0]
    assert not any("bentoml serve" in ln for ln in runs.third.lines)
    # served on the bare engine, named for the variant, logging into its folder; no bento, no registry
    assert [(c["name"], c["via"], c["log"]) for c in calls["serve"]] == [
        (n, "engine", "engine.log") for n in ("baseline", *RECIPES[:2])]
    assert calls["serve"][0]["model_dir"] == str(runs.inputs.model.resolve())
    assert names(calls, "stop") == ["baseline", *RECIPES[:2]]
    assert calls["build"] == calls["register"] == calls["results"] == [] and calls["loadtest"] == []
    assert names(calls, "evaluate") == ["baseline", "baseline", "w8a8-int8", "w8a8-int8", "broken-int4"]
    base, w8 = third.variants[:2]
    assert base.eval["n_items"] == w8.eval["n_items"] == 4 and w8.recovery == 1.0
    assert base.registry_version is None and base.registry_name is None and base.bento_tag is None
    for a, b in zip(runs.first.report.variants[:2], third.variants[:2]):  # the load tests from the cache
        assert a.load == b.load
    assert done(Path(cfg3.output_dir), "baseline", "evaluate")["key"] == cache_key(
        "eval", base.model_digest, third.variants[0].eval["suite_sha256"], cfg3.eval, cfg3.engine, None, False)
    assert set(third.timings_s) == {
        *(f"{n}/{s}" for n in MEASURED for s in ("serve_start", "evaluate", "evaluate_behaviour")),
        "w8a8-int8/compress", "broken-int4/compress", "broken-int4/serve_start", "broken-int4/evaluate", "total"}


# ---------------------------------------------------------------------------------------------- the other exits

def test_a_failing_baseline_stops_the_run(inputs, fakes, monkeypatch):
    """The baseline is what every variant is judged against: its failure ends the run, with no report."""
    from packager.errors import ServerError
    from packager.release import run_release

    monkeypatch.setitem(SERVER_SETTINGS, "baseline", {"fail_every_n": 1})
    cfg = make_cfg(inputs)
    said: list[str] = []
    with pytest.raises(ServerError, match="^Every request to http://127.0.0.1:"):
        run_release(cfg, show_progress=False, log=said.append)
    run = Path(cfg.output_dir)
    assert said[-1].startswith("[red]baseline failed:[/] Every request to")
    assert not (run / "report.json").exists() and not (run / "variants" / "baseline" / "variant.json").exists()
    assert names(fakes.calls, "stop") == ["baseline"] and fakes.calls["run_recipe"] == []


def test_a_spent_budget_skips_every_variant(inputs, fakes):
    """No time left at the first variant: every one is skipped and named, and the report still comes."""
    from packager.release import run_release

    cfg = make_cfg(inputs, time_budget_s=1e-6)
    said: list[str] = []
    report = run_release(cfg, show_progress=False, log=said.append)
    msg = "skipped: the time budget of 0 s was spent before this variant"
    assert [v.errors for v in report.variants] == [[msg]] * 4
    assert report.notes == [f"{n} {msg}" for n in ("baseline", *RECIPES)]
    assert report.recommendation.variant is None
    assert all(not c for c in fakes.calls.values())
    assert said[1].startswith("[yellow]The estimate exceeds the time budget") and said[-1].startswith("report: ")
    assert (Path(cfg.output_dir) / "report.json").exists()


def test_bad_settings_fail_before_any_file(inputs, fakes):
    """An expected load the load test cannot measure, or no price, fails before the run directory exists."""
    from packager.errors import ConfigError
    from packager.release import run_release

    with pytest.raises(ConfigError, match="needs a load-test sweep"):
        run_release(make_cfg(inputs, expected_load=2), log=lambda m: None)
    with pytest.raises(ConfigError, match="^No price"):
        run_release(make_cfg(inputs, pricing={"instance": None}), log=lambda m: None)
    assert not (inputs.tmp / "run").exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_one_release_bar_on_a_terminal(inputs, fakes, monkeypatch, verbose):
    """On a terminal the release draws one bar (with the step it is at) and turns the steps' own bars off; its
    messages print above the bar. With --verbose there is no release bar and the steps draw their own."""
    import packager.core.logs as logs
    import packager.evaluate.runner as eval_mod
    import packager.release.runner as runner_mod
    from rich.console import Console

    from packager.release import run_release

    term = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=200, soft_wrap=True)
    monkeypatch.setattr(runner_mod, "console", term)
    monkeypatch.setattr(logs, "is_verbose", lambda: verbose)
    shown: list[bool] = []
    evaluate = eval_mod.evaluate_model

    def recording(*a, **kw):
        shown.append(kw["show_progress"])
        return evaluate(*a, **kw)

    monkeypatch.setattr(eval_mod, "evaluate_model", recording)
    monkeypatch.setattr(runner_mod, "print_to_console", lambda m: term.print(m, highlight=False))
    cfg = make_cfg(inputs, recipes=["w8a8-int8"])
    cfg.eval.behaviour_suite = None
    report = run_release(cfg, show_progress=True)
    out = term.file.getvalue()  # type: ignore[attr-defined]
    assert [v.name for v in report.variants] == ["baseline", "w8a8-int8"] and not report.variants[1].errors
    assert shown == [verbose, verbose]  # the steps' own bars only with --verbose
    assert ("release" in out and "━" in out) is (not verbose)
    assert "packager release: model" in out and "w8a8-int8 done in " in out and "report: " in out
