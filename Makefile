# Guidance Lab: provision the ComfyUI host, run the tests, run the demo.
# `make provision` is idempotent and cached (~2-3 min the first time, seconds after).
PYTHON ?= python3
HOST_PY := .host/venv/bin/python
PYTEST_ARGS ?=

.PHONY: provision test demo benchmark

provision:
	$(PYTHON) host/provision.py

test: provision
	$(HOST_PY) -m pytest tests $(PYTEST_ARGS)

demo: provision
	$(HOST_PY) demo/run_demo.py

benchmark: provision
	$(HOST_PY) benchmarks/guidance_benchmark.py
