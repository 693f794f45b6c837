# Guidance Lab: provision the ComfyUI host, run the tests, run the demo.
# `make provision` is idempotent and cached (~2-3 min the first time, seconds after).
# Every development script is a module under tools/, run from the repository root.
#
# The pinned host (tools/host/host.lock: ComfyUI 0.3.75) unless COMFYUI names another ComfyUI
# tree, as a folder or a tarball: `make test COMFYUI=../shared/hosts/comfyui-0.33.0.tar.xz`.
# Each host has its own folder and cached venv; the recipes hand the provisioned host to the
# tools and tests through GUIDANCE_LAB_HOST (tools/paths.py).
PYTHON ?= python3
COMFYUI ?=
PYTEST_ARGS ?=
BENCHMARK_ARGS ?=
PROVISION := $(PYTHON) -m tools.host.provision $(if $(COMFYUI),--comfyui $(COMFYUI))
# runs $(1) as a module under the provisioned host's python, with the host selected
ON_HOST = host=$$($(PROVISION) --print-host) && GUIDANCE_LAB_HOST=$$host $$host/venv/bin/python -m $(1)

.PHONY: provision test demo benchmark

provision:
	$(PROVISION)

test:
	@$(call ON_HOST,pytest tests $(PYTEST_ARGS))

demo:
	@$(call ON_HOST,tools.demo)

benchmark:
	@$(call ON_HOST,tools.benchmark.guidance_benchmark $(BENCHMARK_ARGS))
