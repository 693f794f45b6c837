"""ComfyUI node classes of the pack: thin translations to the core's calls."""

from .adaptive_guider import AdaptiveGuiderNode
from .apg_guider import APGGuiderNode
from .cfg_guider import CFGGuiderNode
from .default_model import DefaultModelLoaderNode
from .linear_ag import LinearAGCalibrateNode, LinearAGGuiderNode
from .record_plot import RecordPlotNode
from .sampling import GuidedSamplerNode, SamplerSelectNode

NODES = [CFGGuiderNode, APGGuiderNode, AdaptiveGuiderNode, LinearAGCalibrateNode, LinearAGGuiderNode,
         SamplerSelectNode, GuidedSamplerNode, RecordPlotNode, DefaultModelLoaderNode]
