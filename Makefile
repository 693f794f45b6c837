# Guidance Lab: provision the ComfyUI host, run the tests, run the demo.
# `make provision` is idempotent and cached (~2-3 min the first time, seconds after).
# Every development script is a module under tools/, run from the repository root.
PYTHON ?= python3
HOST_PY := .host/venv/bin/python
PYTEST_ARGS ?=
BENCHMARK_ARGS ?=

.PHONY: provision test demo benchmark

provision:
	$(PYTHON) -m tools.host.provision

test: provision
	$(HOST_PY) -m pytest tests $(PYTEST_ARGS)

demo: provision
	$(HOST_PY) -m tools.demo

benchmark: provision
	$(HOST_PY) -m tools.benchmark.guidance_benchmark $(BENCHMARK_ARGS)
