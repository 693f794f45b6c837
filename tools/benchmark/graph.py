"""Build ComfyUI API-format graphs in code: the shared part of every benchmark graph."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Graph:
    """An API-format prompt under construction; ``add`` returns the new node's id."""

    nodes: dict = field(default_factory=dict)

    def add(self, class_type: str, node_id: str | None = None, **inputs) -> str:
        node_id = node_id or str(len(self.nodes) + 1)
        if node_id in self.nodes:
            raise ValueError(f"node id {node_id} used twice")
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def out(node_id: str, index: int = 0) -> list:
    return [node_id, index]


@dataclass(frozen=True)
class Scene:
    """What every method of one benchmark cell shares: prompt, seed, batch, schedule."""

    prompt: str
    seed: int
    batch: int
    steps: int
    weights: str
    sampler: str = "euler"
    scheduler: str = "normal"


def base_graph(scene: Scene) -> tuple[Graph, dict]:
    """Loader, prompts, noise, schedule and latent of the default model, with fixed node ids so
    that ComfyUI's cache reuses them across methods (only the guider and sampler differ)."""
    g = Graph()
    loader = g.add("GuidanceLab_DefaultModelLoader", "load", weights=scene.weights)
    ids = {
        "model": out(loader, 0), "clip": out(loader, 1), "vae": out(loader, 2),
        "positive": out(g.add("CLIPTextEncode", "positive", text=scene.prompt, clip=out(loader, 1))),
        "negative": out(g.add("CLIPTextEncode", "negative", text="", clip=out(loader, 1))),
        "noise": out(g.add("RandomNoise", "noise", noise_seed=scene.seed)),
        "sigmas": out(g.add("BasicScheduler", "sigmas", model=out(loader, 0), scheduler=scene.scheduler,
                            steps=scene.steps, denoise=1.0)),
        "latent": out(g.add("EmptyChromaRadianceLatentImage", "latent", width=32, height=32,
                            batch_size=scene.batch)),
        # For sampler nodes that take these as widgets (KSampler) rather than as inputs.
        "seed": scene.seed, "steps": scene.steps, "scheduler": scene.scheduler,
    }
    return g, ids


def guided_sample(g: Graph, ids: dict, guider: list, sampler: list, pack_sampler: bool) -> list:
    """Sample with ``guider``/``sampler``. Pack guiders go through the Guided Sampler (which reports
    NFE); ComfyUI's own run through the stock SamplerCustomAdvanced, as a user's would."""
    node = "GuidanceLab_GuidedSampler" if pack_sampler else "SamplerCustomAdvanced"
    return out(g.add(node, "sample", noise=ids["noise"], guider=guider, sampler=sampler,
                     sigmas=ids["sigmas"], latent_image=ids["latent"]))


def finish_graph(g: Graph, ids: dict, latent: list, prefix: str) -> dict:
    """Decode and save the sampled ``latent``."""
    decoded = g.add("VAEDecode", "decode", samples=latent, vae=ids["vae"])
    g.add("SaveImage", "save", images=out(decoded), filename_prefix=prefix)
    return g.nodes
