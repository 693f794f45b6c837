"""The ComfyUI side of the pack: node classes (thin translations to the core's calls) and,
in ``bridge/``, the core plugged into ComfyUI's extension points. The only package that
imports ComfyUI.

The node list and the extension are in ``extension``; this file imports nothing, so the
bridge (the trainers' network builders) loads without ``comfy_api``, whose video types need
PyAV, absent where only torch is installed (a GPU machine's image)."""
