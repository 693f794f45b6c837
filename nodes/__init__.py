"""ComfyUI node classes of the pack: thin translations to the core's calls."""

from .cfg_guider import CFGGuiderNode
from .default_model import DefaultModelLoaderNode
from .sampling import GuidedSamplerNode, SamplerSelectNode

NODES = [CFGGuiderNode, SamplerSelectNode, GuidedSamplerNode]
NODES.append(DefaultModelLoaderNode)
