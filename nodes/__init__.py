"""The ComfyUI side of the pack: node classes (thin translations to the core's calls) and,
in ``bridge/``, the core plugged into ComfyUI's extension points. The only package that
imports ComfyUI."""

from comfy_api.latest import ComfyExtension

from .adaptive import AdaptiveGuiderNode
from .apg import APGGuiderNode
from .cfg import CFGGuiderNode
from .ddim_inversion import DDIMInvertNode
from .default_model import DefaultModelLoaderNode
from .edict import EdictInvertNode, EdictSampleNode
from .linear_ag import LinearAGCalibrateNode, LinearAGGuiderNode
from .model_patch import GuidanceModelPatchNode, GuidanceReportNode
from .record_plot import RecordPlotNode
from .sampling import GuidedSamplerNode, SamplerSelectNode
from .smooth_interpolation import SmoothInterpolateNode, SmoothnessNode
from .smooth_lora import SmoothLoraLoaderNode

NODES = [CFGGuiderNode, APGGuiderNode, AdaptiveGuiderNode, LinearAGCalibrateNode, LinearAGGuiderNode,
         GuidanceModelPatchNode, GuidanceReportNode, SamplerSelectNode, GuidedSamplerNode, RecordPlotNode,
         DefaultModelLoaderNode, SmoothLoraLoaderNode, SmoothInterpolateNode, SmoothnessNode,
         EdictInvertNode, EdictSampleNode, DDIMInvertNode]


class GuidanceLabExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)
