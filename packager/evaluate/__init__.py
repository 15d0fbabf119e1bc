"""Task suites, scorers, and evaluation of a model through its serving engine (or any OpenAI endpoint)."""
