"""The compat seam (nodes/bridge/compat.py) and what changed under the pack between ComfyUI
0.3.75 and 0.33 (issue 28), on whichever host this run selected (GUIDANCE_LAB_HOST)."""

import ast
import asyncio
import concurrent.futures
import inspect

import pytest
import torch

from guidance_lab.nodes.bridge import compat
from guidance_lab.nodes.bridge.samplers import COMFY_EVALUATIONS, UNPLANNED, pack_sampler
from guidance_lab.nodes.cfg import CFGGuiderNode
from tools.paths import REPO

from .comfy_graph import empty_latent, sample

pytestmark = pytest.mark.host


def test_copy_network_copies_the_weights_and_shares_the_config(fixture_model):
    base = fixture_model[0].model
    copied = compat.copy_network(base)
    assert copied.model_config is base.model_config
    original = dict(base.named_parameters())
    for name, p in copied.named_parameters():
        assert torch.equal(p, original[name]) and p.data_ptr() != original[name].data_ptr()


def test_plain_deepcopy_fails_where_the_config_answers_every_attribute(fixture_model):
    """Why copy_network exists: on 0.33 (upstream 092ee8a5) BASE.__getattr__ returns None, so
    copy.deepcopy calls None(state). On 0.3.75 the plain copy still works."""
    import copy

    import comfy.supported_models_base

    model, _, _ = fixture_model
    if "__getattr__" in vars(comfy.supported_models_base.BASE):
        with pytest.raises(TypeError, match="'NoneType' object is not callable"):
            copy.deepcopy(model.model)
    else:
        copy.deepcopy(model.model)


def test_every_sampler_the_host_ships_has_an_evaluation_plan():
    """A sampler added by a ComfyUI update (0.33: exp_heun_2_x0, exp_heun_2_x0_sde) is named here;
    test_step_accounting checks each plan against the sampler's own callbacks."""
    import comfy.samplers

    missing = [n for n in comfy.samplers.KSAMPLER_NAMES
               if n not in UNPLANNED and f"sample_{n}" not in COMFY_EVALUATIONS]
    assert missing == []


def test_pack_samplers_take_keywords_a_newer_host_adds_but_refuse_a_wrong_option_of_the_pack(fixture_model):
    model, pos, neg = fixture_model
    guider = CFGGuiderNode.execute(model, pos, neg, 3.0).args[0]
    sampler = pack_sampler("euler")
    plain = sample(guider, None, 2, empty_latent(1), seed=1, sampler=sampler)
    inner = sampler.sampler_function
    sampler.sampler_function = lambda *a, **kw: inner(*a, **kw, some_future_argument=1)
    assert torch.equal(sample(guider, None, 2, empty_latent(1), seed=1, sampler=sampler), plain)
    with pytest.raises(TypeError, match="no_such_option"):
        sample(guider, None, 2, empty_latent(1), seed=1, sampler=pack_sampler("euler", no_such_option=1))


def test_fix_empty_latent_prepares_a_latent_as_the_hosts_samplers_do(fixture_model):
    """0.33 resizes an empty latent made for another downscale ratio (here 16 for a model of 8);
    0.3.75 only fills in the channels."""
    import comfy.sample

    model, _, _ = fixture_model
    latent = {"samples": torch.zeros(1, 3, 4, 4), "downscale_ratio_spacial": 16}
    fix = comfy.sample.fix_empty_latent_channels
    takes_ratios = "downscale_ratio_spacial" in inspect.signature(fix).parameters
    assert compat.fix_empty_latent(model, latent).shape == ((1, 4, 8, 8) if takes_ratios else (1, 4, 4, 4))


def test_the_v3_api_is_latest_because_no_stable_version_exports_its_nodes():
    """The pack imports comfy_api.latest: every version module that exports ``io`` (v0_0_2 on
    0.3.75 and 0.33) is marked STABLE = False and re-exports latest's own objects, so pinning
    it would freeze nothing. When a host ships a stable one, this fails: pin it then."""
    import importlib

    import comfy_api.latest
    from comfy_api.version_list import supported_versions

    for version in supported_versions:
        module = importlib.import_module(version.__module__)
        if hasattr(module, "io") and version.VERSION != "latest":
            assert not version.STABLE, f"comfy_api {version.VERSION} is stable: import the pack's V3 API from it"
            assert module.io is comfy_api.latest.io
    imports = set()
    for path in [REPO / "__init__.py", *(REPO / "nodes").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("comfy_api"):
                imports.add(node.module)
    assert imports == {"comfy_api.latest"}


def test_the_extension_registers_its_folders_once_whether_or_not_the_host_calls_on_load(host):
    """0.33's V3 loader awaits on_load before get_node_list; 0.3.75 never calls on_load."""
    import folder_paths

    from guidance_lab import comfy_entrypoint
    from guidance_lab.default_model import LORAS_DIR

    # In a thread of its own: an earlier test of the session (Playwright's sync API) may leave
    # an event loop marked running in the main thread, where asyncio.run refuses to start.
    async def load_twice():
        extension = await comfy_entrypoint()
        await extension.on_load()
        await extension.get_node_list()
        await extension.get_node_list()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, load_twice()).result()
    if LORAS_DIR.is_dir():
        assert folder_paths.get_folder_paths("loras").count(str(LORAS_DIR)) == 1


def test_patched_model_options_are_left_as_they_were_by_a_run(fixture_model):
    """0.33's ModelPatcher.clone() copies model options' dicts and lists but shares the objects
    in them (0.3.75 deep-copied them): the pack keeps run state out of the MODEL on both."""
    from guidance_lab.nodes.model_patch import GuidanceModelPatchNode

    model, pos, neg = fixture_model
    guider = CFGGuiderNode.execute(model, pos, neg, 3.0).args[0]
    patched = GuidanceModelPatchNode.execute(model, guider).args[0]
    clone = patched.clone()
    before = repr(patched.model_options), repr(clone.model_options)
    from .comfy_graph import comfy_cfg

    sample(comfy_cfg(clone, pos, neg, 3.0), "euler", 2, empty_latent(1), seed=2)
    sample(comfy_cfg(patched, pos, neg, 3.0), "euler", 2, empty_latent(1), seed=2)
    assert (repr(patched.model_options), repr(clone.model_options)) == before


def test_dynamic_vram_is_not_exercised_on_these_machines(host):
    """0.33 makes dynamic VRAM (ModelPatcherDynamic, with comfy-aimdo) the default on CUDA, where
    forward wrappers that hold block references can see unpatched LoRA weights. The pack holds
    no block references (AGD patches attn2 through ComfyUI's patch lists and DiT blocks through
    patches_replace["dit"], whose original_block is ComfyUI's own call; Smooth-LoRA goes
    through comfy.lora), but no run here shows it: this records the gap in the test report."""
    import comfy.model_patcher

    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("this ComfyUI (0.3.75) has no dynamic VRAM (ModelPatcherDynamic)")
    pytest.skip("dynamic VRAM (ModelPatcherDynamic) is CUDA-only; these CPU machines never construct it, "
                "so the pack under it is untested here" if not torch.cuda.is_available() else
                "no test of the pack under dynamic VRAM has been written on a CUDA machine yet")


# ---------------------------------------------------------------- nested latents (0.33)

class TwoStreamNet(torch.nn.Module):
    """A network over a list of streams (as ComfyUI's audio-video models take them): each stream
    scaled, plus a term from the prompt, so cond and uncond differ."""

    def __init__(self, **kwargs):
        super().__init__()
        self.dtype = torch.float32  # read by BaseModel
        self.scale = torch.nn.Parameter(torch.tensor(0.8))
        self.prompt = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        streams = list(x) if isinstance(x, (list, tuple)) else [x]
        out = [s * self.scale + context.mean() * self.prompt for s in streams]
        return out if isinstance(x, (list, tuple)) else out[0]


def two_stream_model():
    import comfy.conds
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models_base

    class Config(comfy.supported_models_base.BASE):
        unet_config = {}
        unet_extra_config = {}
        latent_format = comfy.latent_formats.SD15
        supported_inference_dtypes = [torch.float32]

    class TwoStream(comfy.model_base.BaseModel):
        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            if kwargs.get("latent_shapes") is not None:
                out["latent_shapes"] = comfy.conds.CONDConstant(kwargs["latent_shapes"])
            return out

    model = TwoStream(Config({}), model_type=comfy.model_base.ModelType.EPS, unet_model=TwoStreamNet)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def test_a_nested_latent_is_packed_and_guided_as_comfyui_guides_it(host):
    """0.33 packs a nested latent (several streams) to (B, 1, N) in CFGGuider.sample before
    outer_sample; the pack's guider, which delegates to it, must give core's numbers and book
    each step's evaluations."""
    import comfy.samplers
    import comfy.utils

    if not hasattr(comfy.utils, "pack_latents"):
        pytest.skip("this ComfyUI (0.3.75) does not pack nested latents: no comfy.utils.pack_latents")
    from comfy.nested_tensor import NestedTensor

    model = two_stream_model()
    pos, neg = [[torch.ones(1, 2, 8), {}]], [[torch.zeros(1, 2, 8), {}]]
    shapes = [(1, 4, 4, 4), (1, 4, 2, 3)]
    gen = torch.Generator().manual_seed(0)
    noise = NestedTensor([torch.randn(s, generator=gen) for s in shapes])
    latent = NestedTensor([torch.zeros(s) for s in shapes])
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 3)
    sampler = comfy.samplers.sampler_object("euler")

    core = comfy.samplers.CFGGuider(model)
    core.set_conds(pos, neg)
    core.set_cfg(4.0)
    expected = core.sample(noise, latent, sampler, sigmas, seed=0)
    ours = CFGGuiderNode.execute(model, pos, neg, 4.0).args[0]
    got = ours.sample(noise, latent, sampler, sigmas, seed=0)
    assert [tuple(t.shape) for t in got.unbind()] == shapes
    for a, b in zip(got.unbind(), expected.unbind()):
        assert torch.allclose(a, b, atol=1e-6)
    assert ours.last_record.nfe_per_step == [2.0] * 3
