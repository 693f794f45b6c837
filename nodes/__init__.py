"""The ComfyUI side of the pack: node classes (thin translations to the core's calls) and,
in ``bridge/``, the core plugged into ComfyUI's extension points. The only package that
imports ComfyUI."""

from comfy_api.latest import ComfyExtension

from .adaptive import AdaptiveGuiderNode
from .apg import APGGuiderNode
from .cfg import CFGGuiderNode
from .default_model import DefaultModelLoaderNode
from .linear_ag import LinearAGCalibrateNode, LinearAGGuiderNode
from .record_plot import RecordPlotNode
from .sampling import GuidedSamplerNode, SamplerSelectNode

NODES = [CFGGuiderNode, APGGuiderNode, AdaptiveGuiderNode, LinearAGCalibrateNode, LinearAGGuiderNode,
         SamplerSelectNode, GuidedSamplerNode, RecordPlotNode, DefaultModelLoaderNode]


class GuidanceLabExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)
