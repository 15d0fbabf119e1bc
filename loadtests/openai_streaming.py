"""Locustfile: the OpenAI-style streaming user of packager, driven by a packager load plan.

The implementation ships inside the package (packager/loadtest/locustfile_openai.py) so that an installed
packager finds it; this file re-exports it for people who run locust by hand:

    PACKAGER_LOADTEST_PLAN=run/plan.json PACKAGER_LOADTEST_RECORDS=run/records.jsonl \\
        python -m locust -f loadtests/openai_streaming.py --headless -u 1 -r 1 --run-time 10m --exit-code-on-error 0

See loadtests/README.md for the plan format, traffic shapes and distributed runs.
"""
from packager.loadtest.locustfile_openai import OpenAIStreamingUser  # noqa: F401  (locust collects User classes)
