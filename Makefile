# edge-run developer shortcuts. `make demo` is the README's first command; `make test` its second.
PY ?= python
MODELS ?= models
PROFILE ?= pi4-4gb

.PHONY: demo test lint zoo arm-check

zoo:
	$(PY) -m tools.zoo build

# The embedded default model (SmolLM2-135M-Instruct): build its checkpoint, convert two quant types,
# let the picker choose among them and the planned pairings for a Raspberry Pi 4, run the pick.
demo:
	$(PY) -m tools.zoo build smollm2-135m
	mkdir -p $(MODELS)
	ln -sfn "$$($(PY) -m tools.zoo path smollm2-135m)" $(MODELS)/smollm2-135m
	edge-run convert $(MODELS)/smollm2-135m --quant q8_0,q4_k_m --out $(MODELS) --force
	edge-run pick --profile $(PROFILE) --models $(MODELS) --ctx 2048
	edge-run run --profile $(PROFILE) --models $(MODELS) --ctx 2048 -p "The capital of France is" -n 32

test:
	$(PY) -m pytest

# The emulated Raspberry Pi leg (README: "Raspberry Pi under emulation"); needs root, mmdebstrap and
# qemu-user-static >= 8.1. Writes results/arm_check.json and results/arm_rss.json.
arm-check:
	$(PY) -m tools.arm_check

lint:
	$(PY) -m ruff check runtime converters tests tools
