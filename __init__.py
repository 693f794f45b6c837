"""Guidance Lab: better and cheaper guidance, exact inversion and smooth latents for ComfyUI.

ComfyUI imports this file from ``custom_nodes/``; the nodes (and with them every
ComfyUI import) load only in ``comfy_entrypoint``, so the core packages ``guiders`` and
``samplers`` import without a host.
"""


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import NODES

    class GuidanceLabExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    return GuidanceLabExtension()
