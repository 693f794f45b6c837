"""The pack's core plugged into ComfyUI's extension points (GUIDER, KSAMPLER, wrappers).

Imports ComfyUI; the core (guiders/, samplers/) does not."""
