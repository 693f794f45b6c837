"""In-process host tests: the real ComfyUI goes on sys.path before these modules import."""

from guidance_lab.tests.paths import ensure_host_importable

ensure_host_importable()
