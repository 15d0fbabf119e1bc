"""packager: compress, evaluate, serve, load-test, register and monitor LLM deployments."""
__version__ = "0.1.0"
