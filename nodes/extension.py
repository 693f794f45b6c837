"""The pack's node list and the V3 extension ComfyUI loads: the one registry of its nodes."""

from comfy_api.latest import ComfyExtension

from .adaptive import AdaptiveGuiderNode
from .bridge import prompt_checks
from .agd import AGDAdapterLoaderNode, AGDGuiderNode, AGDTrainNode
from .apg import APGGuiderNode
from .bidirectional import BidirectionalInvertNode, BidirectionalSampleNode, BidirectionalSamplerNode
from .cfg import CFGGuiderNode
from .ddim_inversion import DDIMInvertNode
from .default_model import DefaultModelLoaderNode
from .edict import EdictInvertNode, EdictSampleNode
from .hallucination import HallucinationFilterNode, HallucinationScoreNode
from .linear_ag import LinearAGCalibrateNode, LinearAGGuiderNode
from .model_patch import GuidanceModelPatchNode, GuidanceReportNode
from .record_plot import RecordPlotNode
from .sampling import GuidedSamplerNode, SamplerSelectNode
from .smooth_interpolation import EdictInterpolateNode, SmoothInterpolateNode, SmoothnessNode
from .smooth_lora import SmoothLoraLoaderNode

NODES = [CFGGuiderNode, APGGuiderNode, AdaptiveGuiderNode, LinearAGCalibrateNode, LinearAGGuiderNode,
         GuidanceModelPatchNode, GuidanceReportNode, SamplerSelectNode, GuidedSamplerNode, RecordPlotNode,
         DefaultModelLoaderNode, SmoothLoraLoaderNode, SmoothInterpolateNode, SmoothnessNode,
         EdictInvertNode, EdictSampleNode, DDIMInvertNode, EdictInterpolateNode, AGDAdapterLoaderNode,
         AGDGuiderNode, AGDTrainNode, BidirectionalInvertNode, BidirectionalSampleNode,
         BidirectionalSamplerNode, HallucinationScoreNode, HallucinationFilterNode]


def register_shipped_folders() -> None:
    """The Smooth-LoRAs trained on the default models join ComfyUI's loras list (its own
    registry of model folders, as extra_model_paths.yaml entries do), so the pack's loader
    and the stock LoraLoader both offer them."""
    import folder_paths

    from ..default_model import LORAS_DIR

    if LORAS_DIR.is_dir() and str(LORAS_DIR) not in folder_paths.get_folder_paths("loras"):
        folder_paths.add_model_folder_path("loras", str(LORAS_DIR), is_default=False)


class GuidanceLabExtension(ComfyExtension):
    async def get_node_list(self):
        # Here rather than in on_load, which ComfyUI 0.3.75 does not call.
        register_shipped_folders()
        prompt_checks.register(NODES)
        return list(NODES)
