# edge-run developer shortcuts. `make demo` is the README's first command; `make test` its second.
PY ?= python
MODELS ?= models
PROFILE ?= pi4-4gb

.PHONY: demo test lint zoo

zoo:
	$(PY) -m tools.zoo build

demo:
	$(PY) -m tools.zoo build smollm2-135m
	edge-run convert "$$($(PY) -m tools.zoo path smollm2-135m)" --quant q8_0,q4_k_m --out $(MODELS) --name smollm2-135m --force
	edge-run run $(MODELS)/smollm2-135m.Q4_K_M.gguf -p "The capital of France is" -n 32

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check runtime converters tests tools
