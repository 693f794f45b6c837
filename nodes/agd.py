"""AGD, adapter guidance distillation (Jensen & Sadat, TMLR 2025): the adapter loader, the
1-NFE guider and the training node. Math in ``guiders/agd``, injection in ``bridge/agd.py``,
training in ``bridge/agd_training.py``."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..default_model import AGD_ADAPTERS, AGD_DIR
from ..guiders.agd import TRANSFORMER_KINDS, AGDPolicy
from ..guiders.agd import adapter_file as agd_file
from .bridge.agd import AGDGuider, apply_adapters, find_adapters, unsupported_reason
from .bridge.files import PackFile, file_stamp, locate_file, plan_write, read_roots, relative_to_output
from .guider_common import guider_output
from .validation import NodeInputError, checks_inputs, require_conditioning

FILE_TOOLTIP = ("AGD adapter file (.safetensors), relative to ComfyUI's output folder (the AGD "
                "trainer saves there) or its input folder, e.g. agd/adapter.safetensors; or one the pack "
                f"ships for its default models: {', '.join(AGD_ADAPTERS.values())}.")


def adapter_roots() -> list:
    """Where the loader looks, in order: ComfyUI's output folder (the trainer's), its input
    folder, the adapters the pack ships for its default models."""
    return [*read_roots(), ("the pack's shipped adapters", AGD_DIR)]


class AGDAdapterLoaderNode(io.ComfyNode):
    DISPLAY = "AGD Adapter Loader (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_AGDAdapterLoader",
            display_name=cls.DISPLAY,
            category="Guidance Lab/agd",
            description="Adds trained AGD adapters (adapter guidance distillation, Jensen & Sadat 2025) "
                        "to the model, on a clone: the base weights stay as they are (cross-attention "
                        "adapters on SD1.x/SD2.x/SDXL UNets, block attention or offset adapters on the "
                        "transformer blocks of SD3, Flux, Wan 2.1 and, on ComfyUI 0.33, Lumina 2). Sample with "
                        "the AGD Guider for CFG-like images at one model evaluation per step. Refuses adapters "
                        "trained on another base model or family.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the adapter was trained on (LoRAs on it are fine)."),
                io.String.Input("adapter_file", default="agd/adapter.safetensors", tooltip=FILE_TOOLTIP),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the adapters (a patched clone); connect it to the AGD Guider."),
                io.String.Output(display_name="report", tooltip="Trained scale range, adapter size, blocks."),
            ],
        )

    @classmethod
    def locate(cls, adapter_file) -> tuple:
        """(folder label, path): a file of the same name in an earlier folder wins."""
        return locate_file(cls.DISPLAY, "adapter_file", adapter_file, roots=adapter_roots())

    @classmethod
    def fingerprint_inputs(cls, adapter_file=None, **_):
        return file_stamp(lambda: cls.locate(adapter_file)[1])

    @classmethod
    @checks_inputs
    def execute(cls, model, adapter_file) -> io.NodeOutput:
        name = adapter_file
        problem = unsupported_reason(model)
        if problem:
            raise NodeInputError(cls.DISPLAY, "model", problem)
        where, path = cls.locate(name)  # the report says which folder it was
        try:
            loaded = agd_file.load(path)
            patched = apply_adapters(model, loaded.adapters, loaded.scale_range, loaded.base_fingerprint,
                                     source=str(name), architecture=loaded.architecture)
        except ValueError as err:
            raise NodeInputError(cls.DISPLAY, "adapter_file", f"({name!r}): {err}") from None
        lo, hi = loaded.scale_range
        count = loaded.adapters.parameter_count()
        base = loaded.base_parameter_count
        share = f" ({100 * count / base:.1f}% of the model)" if base else ""
        report = (f"{name} (from {where}): {len(loaded.adapters.layout)} adapters, {count} parameters{share}; "
                  f"trained for scales {lo:g} to {hi:g}")
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


class AGDGuiderNode(io.ComfyNode):
    DISPLAY = "AGD Guider (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_AGDGuider",
            display_name=cls.DISPLAY,
            category="Guidance Lab/agd",
            description="Guidance at the cost of no guidance: evaluates only the prompt, once per step, "
                        "with the scale fed to the AGD adapters, which imitate CFG at that scale "
                        "(against the empty prompt; AGD has no negative prompt). The scale must lie in "
                        "the adapter's trained range.",
            inputs=[
                io.Model.Input("model", tooltip="A model from the AGD Adapter Loader."),
                io.Conditioning.Input("positive", tooltip="What the image should show. There is no negative "
                                                          "prompt: AGD learnt CFG against the empty prompt."),
                io.Float.Input("scale", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="The CFG scale to imitate; must lie in the range the adapter was "
                                       "trained on (the loader's report shows it). Outside it: an error."),
            ],
            outputs=[guider_output()],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, scale) -> io.NodeOutput:
        require_conditioning(cls.DISPLAY, "positive", positive)
        agd = find_adapters(model)
        if agd is None:
            raise NodeInputError(cls.DISPLAY, "model", "has no AGD adapters; load them with the AGD Adapter "
                                 "Loader first")
        try:
            policy = AGDPolicy(float(scale), agd.scale_range)
        except ValueError as err:
            raise NodeInputError(cls.DISPLAY, "scale", str(err)) from None
        guider = AGDGuider(model, policy, node_name=cls.DISPLAY)
        guider.set_positive(positive)
        return io.NodeOutput(guider)


MAX_PROMPTS = 4096
AGD_FILE = PackFile(agd_file.FORMAT, "AGD adapter")


def trainable_problem(model) -> str:
    """Why the trainer cannot train adapters for ``model`` ("" if it can), before any sampling."""
    # The trajectories would come from the patched model and the training copy is the bare base.
    if any(key.startswith("diffusion_model.") for key in model.patches):
        return ("carries weight patches (a LoRA, say): adapters are trained for the base model and then "
                "combine with its LoRAs; connect the model as the checkpoint loader gives it")
    options = model.model_options
    transformer = options.get("transformer_options", {})
    # Wrappers too (the pack's Guidance Model Patch is one): the teacher would sample through them.
    wrappers = [key for table in (model.wrappers, transformer.get("wrappers", {}))
                for kind in table.values() for key, fns in kind.items() if fns]
    added = sorted([*model.object_patches, *(k for k in options if k != "transformer_options" and options[k]),
                    *(k for k in ("patches", "patches_replace") if transformer.get(k)),
                    *(f"wrapper {key}" for key in wrappers)])
    if added:
        return (f"carries patches other nodes added ({', '.join(added)}): the trainer copies the bare base "
                "model, so they would be in the teacher and not in the student; connect the model as the "
                "checkpoint loader gives it")
    return unsupported_reason(model)


class AGDTrainNode(io.ComfyNode):
    DISPLAY = "AGD Train Adapter (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_AGDTrain",
            display_name=cls.DISPLAY,
            category="Guidance Lab/agd",
            is_output_node=True,
            description="Trains AGD adapters for this model: samples one CFG run per prompt (scale drawn from "
                        "the range, empty negative prompt), then fits the adapters so that one model "
                        "evaluation imitates CFG at any scale of the range. Saves the adapter file for the AGD "
                        "Adapter Loader. An interrupted run continues where it stopped when queued again, until "
                        "ComfyUI restarts (its work lies in ComfyUI's temp folder, which a restart clears).",
            inputs=[
                io.Model.Input("model", tooltip="The base model to distil (the adapters are only valid for it)."),
                io.Clip.Input("clip", tooltip="The model's text encoder, to encode the prompts."),
                io.String.Input("prompts", multiline=True, default="a red circle on a white background\n"
                                "a blue star on a black background",
                                tooltip="Training prompts, one per line: like the prompts you will use "
                                        "(the paper uses about 500)."),
                io.Float.Input("scale_min", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Lowest CFG scale the adapters learn (the AGD Guider refuses lower)."),
                io.Float.Input("scale_max", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Highest CFG scale the adapters learn (the AGD Guider refuses higher)."),
                io.Int.Input("sampling_steps", default=20, min=1, max=1000,
                             tooltip="Steps of each CFG training run (euler, normal schedule); sample AGD with "
                                     "a similar number of steps."),
                io.Int.Input("training_steps", default=500, min=1, max=100000,
                             tooltip="Optimizer steps (the paper: 5000 at batch 64)."),
                io.Int.Input("batch_size", default=32, min=1, max=1024, tooltip="Samples per optimizer step."),
                io.Float.Input("learning_rate", default=1e-3, min=1e-6, max=1.0, step=1e-5, round=1e-6,
                               tooltip="AdamW peak learning rate (10% warm-up, then cosine decay)."),
                io.Int.Input("adapter_width", default=32, min=4, max=1024,
                             tooltip="Width of each adapter (the reference uses 320 for SD models; larger "
                                     "adapters cost more parameters)."),
                io.Int.Input("image_size", default=512, min=8, max=4096, step=8,
                             tooltip="Width and height in pixels of the training runs (sample at this size); "
                                     "the pack's default model: 32."),
                io.Int.Input("training_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seeds the scales, starting noises, batches and initial weights "
                                     "(fixed: the same settings train the same adapter)."),
                io.String.Input("filename", default="agd/adapter",
                                tooltip="Where to save, relative to ComfyUI's output folder (.safetensors is added)."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace an existing adapter of this name; off: the next free numbered "
                                         "name is used. A file that is not an AGD adapter is never replaced."),
                io.Int.Input("latent_frames", default=1, min=1, max=64, optional=True,
                             tooltip="Video models (Wan): frames of the training runs' latents (Wan 2.1: "
                                     "(video length - 1) / 4 + 1, e.g. 2 for 5 frames); 1 trains on stills. "
                                     "Image models: must be 1."),
                io.Combo.Input("transformer_adapter", options=sorted(TRANSFORMER_KINDS),
                               default="block_attention", optional=True,
                               tooltip="Transformers (SD3, Flux, Wan, Lumina 2): block_attention gives each "
                                       "token of each block its own correction, a cross-attention from the "
                                       "block's output to the scale, time and prompt (on the pack's DiT its "
                                       "images came 1.9-2.3x nearer CFG's than no guidance, offset's 1.2-1.5x); "
                                       "offset adds one learnt vector to every token (the paper's DiT adapter, "
                                       "smaller). "
                                       "UNets: not used (they take cross-attention adapters on attn2)."),
            ],
            outputs=[
                io.String.Output(display_name="adapter_file", tooltip="The saved file, for the AGD Adapter Loader."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss per step."),
                io.String.Output(display_name="report", tooltip="What was trained and the final loss."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, clip, prompts, scale_min, scale_max, sampling_steps, training_steps, batch_size,
                learning_rate, adapter_width, image_size, training_seed, filename, overwrite=False,
                latent_frames=1, transformer_adapter="block_attention") -> io.NodeOutput:
        import numpy as np
        import torch

        from .bridge.agd_training import is_video, train_in_graph
        from .bridge.record_plot import series_plot

        if not callable(getattr(clip, "tokenize", None)):
            raise NodeInputError(cls.DISPLAY, "clip", f"is {type(clip).__name__}, not a CLIP; connect the "
                                 "model's text encoder (e.g. Load Checkpoint's CLIP output)")
        texts = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not texts:
            raise NodeInputError(cls.DISPLAY, "prompts", "is empty; give at least one prompt, one per line")
        if len(texts) > MAX_PROMPTS:
            raise NodeInputError(cls.DISPLAY, "prompts", f"has {len(texts)} lines; at most {MAX_PROMPTS}")
        if scale_min > scale_max:
            raise NodeInputError(cls.DISPLAY, "scale_max", f"is {scale_max}, below scale_min {scale_min}")
        if find_adapters(model) is not None:
            raise NodeInputError(cls.DISPLAY, "model", "already has AGD adapters; connect the base model")
        problem = trainable_problem(model)
        if problem:
            raise NodeInputError(cls.DISPLAY, "model", problem)
        if latent_frames != 1 and not is_video(model.get_model_object("latent_format")):
            raise NodeInputError(cls.DISPLAY, "latent_frames", f"is {latent_frames}, but this model's latents are "
                                 "images (no frame axis); set it to 1")
        if transformer_adapter not in TRANSFORMER_KINDS:  # an API prompt may send anything, null included
            raise NodeInputError(cls.DISPLAY, "transformer_adapter", f"is {transformer_adapter!r}; give one of "
                                 f"{', '.join(TRANSFORMER_KINDS)}")
        target = plan_write(cls.DISPLAY, "filename", filename, AGD_FILE, overwrite)
        try:
            made, losses = train_in_graph(model, clip, texts, (scale_min, scale_max), sampling_steps, training_steps,
                                          batch_size, learning_rate, adapter_width, training_seed, image_size,
                                          latent_frames, transformer_adapter)
        except ValueError as err:
            raise ValueError(f"{cls.DISPLAY}: {err}") from err
        rel = relative_to_output(target.save(lambda tmp: agd_file.save(tmp, made)))
        count = made.adapters.parameter_count()
        report = (f"saved {rel}: {len(made.adapters.layout)} adapters, {count} parameters "
                  f"({100 * count / max(made.base_parameter_count, 1):.1f}% of the model), scales {scale_min:g} "
                  f"to {scale_max:g}, {len(texts)} prompts, {training_steps} steps, final loss "
                  + (f"{losses[-1]:.4g}" if losses else "not logged (the run's loss log is gone)"))
        shown = np.asarray(losses, dtype=np.float64)
        if len(shown) > 400:  # mean of windows: the curve stays readable at any length
            shown = np.array([w.mean() for w in np.array_split(shown, 400)])
        plot = series_plot(report[:110], "training loss (MSE to the CFG output)", shown.tolist(), bars=False)
        image = torch.from_numpy(np.asarray(plot, dtype=np.float32) / 255.0)[None]
        return io.NodeOutput(rel, image, report, ui=ui.PreviewText(report))


__all__ = ["AGDAdapterLoaderNode", "AGDGuiderNode", "AGDTrainNode"]
