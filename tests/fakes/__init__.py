"""Fakes shared by tests and benchmarks (see fake_openai.py: an OpenAI-compatible server with settable latencies)."""
