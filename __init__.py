"""Guidance Lab: better and cheaper guidance, exact inversion and smooth latents for ComfyUI.

ComfyUI imports this file from ``custom_nodes/`` and awaits ``comfy_entrypoint`` (the V3
node API). Every ComfyUI import lives under ``nodes/`` and loads only here, so the core
packages ``guiders`` and ``samplers`` import without a host.
"""


async def comfy_entrypoint():
    from .nodes.extension import GuidanceLabExtension

    return GuidanceLabExtension()
