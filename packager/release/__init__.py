"""`packager release`: one model in, a measured choice of deployable variants out.

For the uncompressed baseline and each recipe: compress -> build bento -> serve -> evaluate through the
serving engine -> load-test -> stop -> register; then the report (JSON, Markdown, HTML) with the
recommendation. Every finished step is cached by the content of its inputs (model digest, recipe, suite,
settings) under the run directory, so a rerun after a failure or a changed setting redoes only what changed.

    cache.py     cache_key and StepCache: `<variant dir>/<step>.done.json`
    estimate.py  the default load test, the time estimate, the expected-load check (before any work)
    context.py   the run-wide context and each variant's (what the steps work on)
    steps.py     the steps, each a function of a variant's context
    runner.py    ReleaseRunner (the loop over the variants, then the report) and run_release
"""
from packager.release.cache import StepCache, cache_key
from packager.release.context import BASELINE, RunContext, Variant, VariantContext, console, variant_name
from packager.release.estimate import check_expected_load, default_loadtest, estimate_seconds
from packager.release.runner import ReleaseRunner, run_release
from packager.release.steps import load_summary_from

__all__ = [
    "BASELINE", "ReleaseRunner", "RunContext", "StepCache", "Variant", "VariantContext", "cache_key",
    "check_expected_load", "console", "default_loadtest", "estimate_seconds", "load_summary_from", "run_release",
    "variant_name",
]
