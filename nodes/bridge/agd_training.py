"""AGD training on the host [paper: CFG-trajectory training]: CFG trajectories sampled by
ComfyUI, and the adapters fit to them through the same attention patches sampling uses.

Shared by the command-line trainer (``tools/training/agd.py``, which adds torchrun/DDP) and the
training node. Trajectories: one per prompt (``per_prompt`` for more), its scale
w ~ U[lo, hi] and its noise drawn from a generator seeded by (seed, trajectory), sampled with
ComfyUI's ``CFGGuider`` against the empty prompt by any one-evaluation-per-step sampler;
stored by ``guiders/agd/trajectories.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ...guiders import training_checkpoint
from ...guiders.atomic_file import write_atomically
from ...guiders.agd import AdapterConfig, AdapterSet, AGDPolicy
from ...guiders.agd.trajectories import FORMAT, TrajectoryStore, write_json
from ...guiders.agd.training import agd_loss, batch_indices, lr_at
from .agd import (AGDAdapters, AGDGuider, adapted_call, adapter_layout, apply_adapters, architecture_name,
                  trim_prompt)
from .compat import training_mode
from .fingerprint import base_model_fingerprint

CHECKPOINT = "agd_checkpoint.safetensors"
LOSS_LOG = "agd_loss.jsonl"
# Settings a resumed run must share with its checkpoint (the step count may change).
RESUME_SETTINGS = ("batch_size", "lr", "warmup_frac", "seed", "loss_space", "adapter_config", "base_fingerprint",
                   "adapter_kind", "data")


def _chunks(clip, text: str) -> int:
    """How many chunks of its text encoder ``text`` takes (CLIP's 77 tokens; 1 for an encoder
    that does not pad, such as Lumina 2's Gemma)."""
    tokens = clip.tokenize(text)
    if isinstance(tokens, dict):
        return max([len(chunks) for chunks in tokens.values() if isinstance(chunks, list)] or [1])
    return 1


def _pad_to(value: torch.Tensor, shape) -> torch.Tensor:
    """``value`` zero-padded at the end of each dimension to ``shape``."""
    pad = []
    for have, want in zip(reversed(value.shape), reversed(shape)):
        pad += [0, want - have]
    return torch.nn.functional.pad(value, pad)


def encode_prompts(clip, prompts: list, options: bool = False):
    """[P, L, D] text embeddings by the model's own CLIP (what CLIPTextEncode gives); with
    ``options``, (embeddings, options, lengths): also what the encoder gives beside them, as
    CLIPTextEncode puts it in the conditioning: {name: [P, ...] tensor} (``pooled_output``, an
    ``attention_mask`` ...; none for an encoder without, e.g. Wan's) or a value all prompts
    share, and each prompt's token count. An encoder that does not pad (Lumina 2's Gemma)
    gives prompts of different lengths: they are zero-padded to the longest (per-token options
    too) and ``lengths`` says where each ends; the model always gets them unpadded
    (``trim_prompt``). A prompt longer than one chunk of a padding encoder is refused."""
    encoded = [clip.encode_from_tokens(clip.tokenize(text), return_dict=True) for text in prompts]
    rows = [e["cond"] if e["cond"].ndim == 3 else e["cond"][None] for e in encoded]
    lengths = [int(r.shape[1]) for r in rows]
    shortest, longest = min(lengths), max(lengths)
    for line, (text, row) in enumerate(zip(prompts, rows), start=1):
        if row.shape[1] != shortest and _chunks(clip, text) > 1:  # one stored embedding per prompt
            raise ValueError(f"prompt {line} ({text[:40]!r}...) encodes to {row.shape[1]} tokens, more than one "
                             f"chunk of the text encoder ({shortest}); shorten it")
    if shortest != longest and not options:
        raise ValueError(f"the prompts encode to different lengths ({shortest} to {longest} tokens); give prompts "
                         "of one length here")
    embeddings = torch.cat([_pad_to(r, (1, longest, r.shape[2])) for r in rows]).float()
    if not options:
        return embeddings
    found = {}
    for name in sorted({k for e in encoded for k in e if k != "cond"}):
        values = [e.get(name) for e in encoded]
        if all(v is None for v in values):
            continue
        if all(isinstance(v, torch.Tensor) for v in values) and len({v.ndim for v in values}) == 1:
            values = [v if v.ndim and v.shape[0] == 1 else v[None] for v in values]
            shape = [max(v.shape[d] for v in values) for d in range(values[0].ndim)]
            if len({tuple(v.shape) for v in values}) == 1 or shortest != longest:
                found[name] = torch.cat([_pad_to(v, shape) for v in values])
                continue
        elif all(not isinstance(v, torch.Tensor) and v == values[0] for v in values):
            found[name] = values[0]
            continue
        raise ValueError(f"the text encoder's output {name!r} differs in kind or shape between the prompts; "
                         "the trainer stores one per prompt")
    return embeddings, found, lengths


def select_options(options: dict, rows) -> dict:
    """The conditioning options of the prompts ``rows`` (a slice or index list), batched."""
    return {k: (v[rows].float() if isinstance(v, torch.Tensor) and v.is_floating_point() else
                v[rows] if isinstance(v, torch.Tensor) else v) for k, v in options.items()}


def _model_conds(model, embedding: torch.Tensor, options: dict, latent_shape) -> dict:
    """The model's ``extra_conds`` for one prompt as a sampler makes them
    (``comfy.samplers.encode_model_conds``, as CFGGuider does): {name: COND object}."""
    import comfy.samplers

    noise = torch.zeros((1, *latent_shape))
    cond = {"cross_attn": embedding, "model_conds": {}, **options}
    return comfy.samplers.encode_model_conds(model.model.extra_conds, [cond], noise, torch.device("cpu"),
                                             "positive", latent_image=noise, denoise_mask=None,
                                             seed=0)[0]["model_conds"]


def _is_constant(value) -> bool:
    """One number per model call (``CONDConstant``, Lumina 2's num_tokens): ComfyUI never batches
    conds whose constants differ, and neither do the student's calls (``adapted_call``)."""
    import comfy.conds

    return isinstance(value, comfy.conds.CONDConstant) and isinstance(value.cond, (bool, int, float))


def model_extras(model, embedding: torch.Tensor, options: dict, latent_shape) -> "tuple[dict, dict]":
    """The model's other conditioning for one prompt, as its ``extra_conds`` makes it for a
    sampler: ({name: tensor}, one row (SDXL's ``y`` from the pooled text and the image size, SD3's
    and Flux's ``y``, Flux's ``guidance``; a constant as a 0-d tensor), {name: "int" | "float"}
    of the constants, one number per model call). The prompt embedding itself (``c_crossattn``)
    is not among them. ``options``: the prompt's conditioning options (``select_options``)."""
    extras, constants = {}, {}
    for name, value in _model_conds(model, embedding, options, latent_shape).items():
        if name == "c_crossattn":
            continue
        if _is_constant(value):
            extras[name] = torch.tensor(float(value.cond))
            constants[name] = "int" if isinstance(value.cond, (bool, int)) else "float"
            continue
        tensor = getattr(value, "cond", None)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"the model's conditioning {name!r} ({type(value).__name__}) is not a tensor the "
                             "trainer can store with the trajectories")
        extras[name] = (tensor[0] if tensor.shape[:1] == (1,) else tensor).detach().float().cpu()
    return extras, constants


def cfg_trajectories(model, positive: torch.Tensor, negative: torch.Tensor, scales: torch.Tensor,
                     noise: torch.Tensor, sigmas: torch.Tensor, sampler_name: str, seed: int,
                     positive_options: Optional[dict] = None, negative_options: Optional[dict] = None):
    """Sample a batch with CFG at a per-sample scale through ComfyUI; every evaluation's
    (x, sigma, CFG output) as lists. ComfyUI's cfg is a placeholder != 1 (so the uncond
    branch is evaluated); a post-CFG function puts in each sample's own D_u + w (D_c - D_u),
    in ComfyUI's operation order. ``*_options``: the conditionings' options (pooled outputs ...)."""
    import comfy.samplers

    w = scales.reshape(-1, *([1] * (noise.ndim - 1)))
    records = []

    def per_sample_cfg(args):
        cond, uncond = args["cond_denoised"], args["uncond_denoised"]
        out = uncond + (cond - uncond) * w.to(cond)
        # To the host per evaluation: the records go to a memory map, and keeping a chunk's
        # trajectories on the device would cost steps x the batch's memory (training data, not sampling).
        records.append((args["input"].detach().cpu(), args["sigma"].detach().cpu(), out.detach().cpu()))
        return out

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(per_sample_cfg, disable_cfg1_optimization=True)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds([[positive, dict(positive_options or {})]], [[negative, dict(negative_options or {})]])
    guider.set_cfg(2.0)
    latent = torch.zeros_like(noise)
    guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), sigmas, disable_pbar=True, seed=seed)
    return records


def encode_with_empty(clip, prompts: list) -> tuple:
    """(prompt embeddings, empty prompt's, fingerprint, prompts' conditioning options, empty
    prompt's, prompts' token counts; see ``encode_prompts``). The fingerprint covers what the
    text encoder (its weights, LoRAs, clip skip) made of them, so trajectories made with another
    encoder are never taken for these."""
    embeddings, options, lengths = encode_prompts(clip, prompts, True)
    empty, empty_options, _ = encode_prompts(clip, [""], True)
    digest = hashlib.blake2b(digest_size=8)
    for value in (embeddings, empty, *(v for o in (options, empty_options) for _k, v in sorted(o.items()))):
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    if len(set(lengths)) > 1:  # (equal lengths: the fingerprint stores made before lengths were kept have)
        digest.update(repr(lengths).encode())
    return embeddings, empty, digest.hexdigest(), options, empty_options, lengths


def generate(model, clip, out_dir: Path, prompts: list, scale_range, steps: int, seed: int, chunk: int = 16,
             per_prompt: int = 1, sampler_name: str = "euler", scheduler: str = "normal",
             latent_shape=(3, 32, 32), fingerprint: str = "", progress=None, encoded=None) -> TrajectoryStore:
    """Write (or finish writing) the trajectories of ``prompts`` to ``out_dir``; [paper: CFG-trajectory training].
    ``encoded``: ``encode_with_empty(clip, prompts)`` where the caller has it already."""
    import comfy.samplers

    lo, hi = (float(v) for v in scale_range)
    if not lo <= hi:  # the adapter file would be refused after all the training
        raise ValueError(f"the scale range [{lo:g}, {hi:g}] is empty; give it low to high")
    texts = [p for p in prompts for _ in range(per_prompt)]
    embeddings, empty, text_fingerprint, options, empty_options, lengths = (encoded or
                                                                            encode_with_empty(clip, prompts))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
    unpadded = [trim_prompt(embeddings[i:i + 1], select_options(options, slice(i, i + 1)), lengths[i])
                for i in range(len(prompts))]
    # The model's other conditioning per prompt (SDXL's y ...), stored for the student's calls
    # (zero-padded alike where the prompts' lengths differ: Lumina 2's attention mask).
    made = [model_extras(model, embedding, prompt_options, latent_shape) for embedding, prompt_options in unpadded]
    extras, constants = [row for row, _kinds in made], made[0][1]
    for name in extras[0]:
        shape = [max(row[name].shape[d] for row in extras) for d in range(extras[0][name].ndim)]
        for row in extras:
            row[name] = _pad_to(row[name], shape)
    meta = {"format": FORMAT, "prompts": prompts, "per_prompt": per_prompt,
            "scale_range": [lo, hi], "steps": steps, "seed": seed, "sampler": sampler_name,
            "scheduler": scheduler, "negative": "", "model_fingerprint": fingerprint,
            "text_fingerprint": text_fingerprint,
            "latent_shape": list(latent_shape), "trajectories": len(texts), "samples": len(texts) * steps}
    if extras[0]:
        meta["extras"] = sorted(extras[0])
    if constants:
        meta["constants"] = constants
    if len(set(lengths)) > 1:
        meta["text_lengths"] = lengths
    progress_path = out_dir / "progress.json"
    done = 0
    if (out_dir / "meta.json").is_file():
        store = TrajectoryStore.open(out_dir, mode="r+")
        old = {k: v for k, v in store.meta.items() if k != "complete"}
        if old != meta:
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ValueError(f"{out_dir} holds trajectories made with other settings ({changed}); choose "
                             "another folder")
        if store.meta.get("complete"):
            return store
        done = json.loads(progress_path.read_text())["trajectories"] if progress_path.is_file() else 0
    else:
        store = TrajectoryStore.create(out_dir, meta, len(texts) * steps, latent_shape, tuple(embeddings.shape),
                                       {name: (len(prompts), *value.shape) for name, value in extras[0].items()})
    if done == 0:  # also on a resume: a kill right after create left them unwritten (meta.json first)
        store.prompts[:] = embeddings.numpy().astype(np.float16)
        for name, array in store.extras.items():
            array[:] = torch.stack([row[name] for row in extras]).numpy()
    # Every trajectory's scale and noise come from (seed, trajectory): resumable, chunk-size free.
    for start in range(done, len(texts), chunk):
        ids = list(range(start, min(start + chunk, len(texts))))
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in ids]
        scales = torch.tensor([lo + (hi - lo) * float(torch.rand(1, generator=g)) for g in gens])
        noise = torch.stack([torch.randn(latent_shape, generator=g) for g in gens])
        prompt_ids = [i // per_prompt for i in ids]
        # The teacher samples each prompt as the encoder gave it: one CFG run per prompt length.
        groups = {}
        for j, p in enumerate(prompt_ids):
            groups.setdefault(lengths[p], []).append(j)
        for length, members in groups.items():
            group_ids, group_prompts = [ids[j] for j in members], [prompt_ids[j] for j in members]
            positive, positive_options = trim_prompt(embeddings[group_prompts],
                                                     select_options(options, group_prompts), length)
            records = cfg_trajectories(
                model, positive, empty.expand(len(members), -1, -1).contiguous(), scales[members], noise[members],
                sigmas, sampler_name, seed, positive_options, select_options(empty_options, [0] * len(members)))
            if len(records) != steps:
                raise ValueError(f"sampler {sampler_name!r} made {len(records)} model evaluations for {steps} "
                                 "steps; use a sampler with one evaluation per step (euler, ddim, dpmpp_2m ...)")
            for k, (x, sigma, target) in enumerate(records):
                rows = [store.row(i, k) for i in group_ids]
                store.states[rows] = x.numpy().astype(np.float16)
                store.targets[rows] = target.numpy().astype(np.float16)
                store.sigmas[rows] = sigma.reshape(-1).expand(len(members)).numpy()
                store.scales[rows] = scales[members].numpy()
                store.prompt_index[rows] = np.asarray(group_prompts, dtype=np.int32)
        for array in (store.states, store.targets, store.sigmas, store.scales, store.prompt_index, store.prompts,
                      *store.extras.values()):
            array.flush()
        write_json(progress_path, {"trajectories": ids[-1] + 1})
        if progress is not None:
            progress(ids[-1] + 1, len(texts))
    write_json(out_dir / "meta.json", {**meta, "complete": True})
    return TrajectoryStore.open(out_dir)




class SingleProcess:
    """The distribution interface ``fit`` uses, for one process (torchrun's is in the CLI)."""

    rank, world, main = 0, 1, True

    def __init__(self, device=None):
        self.device = torch.device(device or "cpu")

    def wrap(self, module):
        return module

    def barrier(self):
        pass

    def mean(self, value: float) -> float:
        return value


def student_module(model, agd: AGDAdapters) -> torch.nn.Module:
    """An nn.Module whose parameters are the adapters and whose forward is the adapted frozen
    model, so DistributedDataParallel can wrap it (the frozen model is not a submodule)."""

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.adapters = agd.adapters
            self._frozen = (model, agd)

        def forward(self, x, sigma, context, scale, extras=None):
            frozen_model, frozen_agd = self._frozen
            return adapted_call(frozen_model, frozen_agd, x, sigma, context, scale, extras)

    return Student()


def training_copy(model):
    """A ModelPatcher over a copy of the model's base weights (unpatched) that autograd may use.

    ComfyUI runs nodes under ``torch.inference_mode``, so the weights a loader node made are
    inference tensors, which backpropagation through the frozen model cannot save; the copy
    (made outside inference mode) holds ordinary tensors. It costs one more copy of the model."""
    import comfy.model_patcher

    from .compat import copy_network

    with torch.inference_mode(False):
        base = copy_network(model.model)
        originals = {k: v[0][0] for k, v in model.get_key_patches("diffusion_model.").items()}
        for name, value in originals.items():
            target = base.get_parameter(name) if name in dict(base.named_parameters()) else None
            if target is not None:
                target.data = value.detach().clone().to(target.device)
        for p in base.parameters():
            if p.is_inference():
                p.data = p.data.clone()
        for b_name, b in list(base.named_buffers()):
            if b.is_inference():
                module_name, _, leaf = b_name.rpartition(".")
                owner = base.get_submodule(module_name) if module_name else base
                owner._buffers[leaf] = b.clone()
    return comfy.model_patcher.ModelPatcher(base, load_device=model.load_device, offload_device=model.offload_device)


def save_checkpoint(path: Path, adapters: AdapterSet, optimizer, step: int, settings: dict) -> None:
    """Atomically, as safetensors: a kill mid-write leaves the previous checkpoint."""
    training_checkpoint.save(path, {"adapters": adapters.flat_state_dict(), "optimizer": optimizer.state_dict(),
                                    "step": step, "settings": settings})


def fit(model, store: TrajectoryStore, config: AdapterConfig, run_dir: Path, steps: int, batch_size: int = 64,
        lr: float = 1e-4, warmup_frac: float = 0.1, seed: int = 0, loss_space: str = "denoised",
        checkpoint_every: int = 100, dist=None, on_step: Optional[Callable] = None, crash_after: int = -1,
        log: Callable = print, fingerprint: Optional[str] = None, kind: Optional[str] = None):
    """[paper: CFG-trajectory training]: train adapters on the stored trajectories (AdamW, no weight decay, warm-up +
    cosine), checkpointing to ``run_dir`` and resuming from it. Returns (adapters, losses).
    ``fingerprint``: the base model's, where ``model`` is a training copy of it. ``kind``: the
    adapter kind for a transformer (``adapter_layout``: default offset; a UNet's is cross-attention)."""
    dist = dist or SingleProcess()
    fingerprint = fingerprint or base_model_fingerprint(model)
    if store.meta.get("model_fingerprint") not in ("", fingerprint):
        raise ValueError(f"the trajectories were generated with base model {store.meta['model_fingerprint']}, "
                         f"this model is {fingerprint}")
    model.model.to(dist.device).requires_grad_(False)
    kind, layout = adapter_layout(model, kind)
    adapters = AdapterSet(layout, config, kind).to(dist.device)
    agd = AGDAdapters(adapters, tuple(store.meta["scale_range"]), fingerprint, architecture=architecture_name(model))
    student = student_module(model, agd)
    net = dist.wrap(student)
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=lr, weight_decay=0.0)
    # The model and the data set too: resuming another's checkpoint under a reused run name would
    # write its adapters with this model's fingerprint.
    data = json.dumps({k: v for k, v in store.meta.items() if k != "complete"}, sort_keys=True)
    settings = {"batch_size": batch_size, "lr": lr, "warmup_frac": warmup_frac, "seed": seed,
                "loss_space": loss_space, "adapter_config": config.to_dict(), "base_fingerprint": fingerprint,
                # recorded for the newer kind only, so checkpoints made before it still resume
                **({"adapter_kind": kind} if kind == "block_attention" else {}),
                "data": hashlib.blake2b(data.encode(), digest_size=8).hexdigest()}
    run_dir = Path(run_dir)
    checkpoint, log_path = run_dir / CHECKPOINT, run_dir / LOSS_LOG
    step, losses = 0, []
    if checkpoint.exists():
        state = training_checkpoint.load(checkpoint)
        changed = sorted(k for k in RESUME_SETTINGS if state["settings"].get(k) != settings.get(k))
        if changed:
            raise ValueError(f"checkpoint {checkpoint} was made with other settings {changed}; use another "
                             "run name or the same settings")
        adapters.load_flat_state_dict(state["adapters"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if dist.main:
            log(f"resuming {checkpoint} at step {step}")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if log_path.exists():  # steps after the checkpoint are redone: their log lines go
            rows = [json.loads(line) for line in log_path.read_text().splitlines() if line]
            rows = [r for r in rows if r["step"] <= step]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            write_atomically(log_path, lambda tmp: tmp.write_text(text))  # a kill now keeps the old log whole
            losses = [r["loss"] for r in rows]
    dist.barrier()
    student.train()
    with training_mode():
        return _fit_loop(store, net, adapters, optimizer, settings, checkpoint, log_path, step, losses, steps, seed,
                         batch_size, lr, warmup_frac, loss_space, checkpoint_every, dist, on_step, crash_after)


def _fit_loop(store, net, adapters, optimizer, settings, checkpoint, log_path, step, losses, steps, seed, batch_size,
              lr, warmup_frac, loss_space, checkpoint_every, dist, on_step, crash_after):
    """``fit``'s optimizer steps (in the host's training mode)."""
    while step < steps:
        rows = batch_indices(seed, step, len(store), batch_size, dist.rank, dist.world)
        x, sigma, context, scale, target = store.batch(rows, dist.device)
        extras = store.batch_extras(rows, dist.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_frac)
        loss = agd_loss(net(x, sigma, context, scale, extras), target, sigma, loss_space)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        value = dist.mean(float(loss.detach()))
        losses.append(value)
        if step == crash_after:  # test hook: die as a kill would, before anything is saved
            os._exit(137)
        if dist.main:
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": value}) + "\n")
            if step % checkpoint_every == 0 or step == steps:
                save_checkpoint(checkpoint, adapters, optimizer, step, settings)
        if on_step is not None:
            on_step(step, steps, value)
        dist.barrier()
    return adapters, losses


def resume_from(state: torch.Tensor, sigmas: torch.Tensor, step: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """(noise, sigmas) that make a guider's ``sample`` with a zero latent continue a run from
    ``state``, its sampling state entering ``step`` (k > 0): below sigma_max every family starts
    at sigma * noise (no max-denoise scaling), so noise = state / sigma_k."""
    rest = sigmas[step:]
    return state / rest[0], rest


def sampled_rmse(model, positive: torch.Tensor, negative: torch.Tensor, adapters: AdapterSet, scale_range,
                 scale: float, seeds, steps: int = 20, sampler_name: str = "euler", latent_shape=(3, 32, 32),
                 timing: bool = False, teacher_steps: int = 0, fingerprint: Optional[str] = None,
                 positive_options: Optional[dict] = None, negative_options: Optional[dict] = None):
    """RMSE between AGD's sampled latents (1 NFE per step) and CFG's (empty negative, 2 NFE per
    step) at the same scale, prompts ([P, L, D] embeddings) and seeds: fidelity to the teacher.
    ``timing``: also the seconds each method's sampling took, side by side ((rmse, {cfg, agd})).
    ``teacher_steps`` k > 0 is a diagnosis, not AGD: the student starts from the teacher's own
    state after k steps, so the result bounds what any fix of the first k steps could give.
    ``fingerprint``: the base model the adapters were trained for (an adapter file's), checked
    against ``model``. ``*_options``: the conditionings' options (``encode_prompts(..., True)``:
    the pooled output SDXL, SD3 and Flux need), the negative's for one prompt."""
    import time

    import comfy.samplers

    patched = apply_adapters(model, adapters, scale_range, fingerprint or base_model_fingerprint(model))
    count = positive.shape[0]
    negative = negative.expand(count, -1, -1).contiguous()
    positive_options = dict(positive_options or {})
    negative_options = select_options(negative_options or {}, [0] * count)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps).cpu()
    if not 0 <= teacher_steps < steps:
        raise ValueError(f"teacher_steps must lie in [0, {steps}), got {teacher_steps}")
    sampler = comfy.samplers.sampler_object(sampler_name)
    errors, seconds = [], {"cfg": 0.0, "agd": 0.0}
    for seed in seeds:
        noise = torch.randn((count, *latent_shape), generator=torch.Generator().manual_seed(int(seed)))
        latent = torch.zeros_like(noise)
        cfg = comfy.samplers.CFGGuider(model)
        cfg.set_conds([[positive, dict(positive_options)]], [[negative, dict(negative_options)]])
        cfg.set_cfg(scale)
        states = {}

        def keep_state(i, _denoised, x, _total):
            if i == teacher_steps:  # the state entering step i: the teacher's after i steps
                states["x"] = x.clone()

        started = time.perf_counter()
        teacher = cfg.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=int(seed), callback=keep_state)
        seconds["cfg"] += time.perf_counter() - started
        agd = AGDGuider(patched, AGDPolicy(scale, tuple(scale_range)))
        agd.set_positive([[positive, dict(positive_options)]])
        start_noise, start_sigmas = (resume_from(states["x"], sigmas, teacher_steps) if teacher_steps
                                     else (noise, sigmas))
        started = time.perf_counter()
        student = agd.sample(start_noise, latent, sampler, start_sigmas, disable_pbar=True, seed=int(seed))
        seconds["agd"] += time.perf_counter() - started
        errors.append(((student - teacher) ** 2).mean())
    rmse = float(torch.stack(errors).mean().sqrt())
    return (rmse, seconds) if timing else rmse


def teacher_forced_rmse(model, store: TrajectoryStore, adapters: AdapterSet, chunk: int = 256) -> list:
    """Per sampling step, the RMSE of the adapted one-pass output to the stored CFG output on the
    teacher's own states ([paper: CFG-trajectory training], the training objective without the
    drift of sampling): where along the trajectory the adapters do or do not imitate CFG."""
    fingerprint = base_model_fingerprint(model)
    if store.meta.get("model_fingerprint") not in ("", fingerprint):
        raise ValueError(f"the trajectories were generated with base model {store.meta['model_fingerprint']}, "
                         f"this model is {fingerprint}")
    agd = AGDAdapters(adapters, tuple(store.meta["scale_range"]), "", architecture=architecture_name(model))
    device = next(model.model.parameters()).device  # wherever sampling left the weights
    steps = int(store.meta["steps"])
    totals, counts = np.zeros(steps), np.zeros(steps)
    with torch.no_grad():
        for start in range(0, len(store), chunk):
            rows = np.arange(start, min(start + chunk, len(store)))  # sorted: the order batch() reads in
            x, sigma, context, scale, target = store.batch(rows, device)
            extras = store.batch_extras(rows, device)
            pred = adapted_call(model, agd, x, sigma, context, scale, extras)
            error = ((pred - target) ** 2).flatten(1).mean(1).cpu()
            at = store.step_of(rows)
            np.add.at(totals, at, error.double().numpy())
            np.add.at(counts, at, 1)
    return np.sqrt(totals / np.maximum(counts, 1)).tolist()


def is_video(latent_format) -> bool:
    """Whether a model's latents have a frame axis (Wan: [C, T, H, W])."""
    return int(getattr(latent_format, "latent_dimensions", 2)) == 3


def train_in_graph(model, clip, prompts: list, scale_range, sampling_steps: int, training_steps: int,
                   batch_size: int, lr: float, width: int, seed: int, image_size: int, latent_frames: int = 1,
                   kind: Optional[str] = None):
    """The training node's run: trajectories, then training, in ComfyUI's temporary folder keyed
    by the settings (so a queued-again run resumes both), with the node's progress bar and
    ComfyUI's interrupt. Returns (AdapterFile, losses)."""
    import logging

    import comfy.model_management
    import comfy.utils
    import folder_paths

    from ...guiders.agd.adapter_file import AdapterFile
    from .agd import architecture_of, base_parameter_count

    fingerprint = base_model_fingerprint(model)
    latent_format = model.get_model_object("latent_format")
    # Pixel-space models (ChromaRadiance latents, the pack's default model) have no VAE; the
    # families AGD targets (SD1.x/2.x/XL, SD3, Flux, Wan) downscale by 8. Video latents (Wan,
    # 3 latent dimensions) are trained on runs of ``latent_frames`` frames: [C, T, H, W].
    pixel_space = type(latent_format).__name__ == "ChromaRadiance"
    side = max(int(image_size) // (1 if pixel_space else 8), 1)
    frames = (int(latent_frames),) if is_video(latent_format) else ()
    latent_shape = (int(latent_format.latent_channels), *frames, side, side)
    config = AdapterConfig(width=width, fourier_features=width, mlp_hidden=2 * width,
                           time_features=width + width % 2, seed=seed)
    kind = adapter_layout(model, kind)[0]  # the kind that trains: a UNet's is cross-attention whatever was asked
    encoded = encode_with_empty(clip, prompts)
    data_key = {"fingerprint": fingerprint, "text_fingerprint": encoded[2], "prompts": prompts,
                "scale_range": list(scale_range), "steps": sampling_steps, "seed": seed,
                "latent_shape": list(latent_shape)}
    run_key = {**data_key, "training_steps": training_steps, "batch_size": batch_size, "lr": lr,
               "adapter": config.to_dict(), "adapter_kind": kind}
    digest = lambda d: hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=8).hexdigest()
    work = Path(folder_paths.get_temp_directory()) / "guidance_lab_agd"
    total = len(prompts) + training_steps
    bar = comfy.utils.ProgressBar(total)

    def progress(done, _count):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    def on_step(step, _steps, _loss):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(len(prompts) + step, total)

    store = generate(model, clip, work / f"data_{digest(data_key)}", prompts, scale_range, sampling_steps, seed,
                     latent_shape=latent_shape, fingerprint=fingerprint, progress=progress, encoded=encoded)
    # The sampled model stays loaded after the trajectories; the copy that trains is made from
    # its offloaded weights, so the device holds one copy of the network, not two.
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    with torch.inference_mode(False), torch.enable_grad():
        trainable = training_copy(model)
        adapters, losses = fit(trainable, store, config, work / f"run_{digest(run_key)}", training_steps, batch_size,
                               lr, 0.1, seed, "denoised", checkpoint_every=25,
                               dist=SingleProcess(comfy.model_management.get_torch_device()), on_step=on_step,
                               log=logging.getLogger("guidance_lab").info, fingerprint=fingerprint, kind=kind)
        adapters = adapters.to("cpu")
    training = {"node": "GuidanceLab_AGDTrain", "prompts": len(prompts), "sampling_steps": sampling_steps,
                "training_steps": training_steps, "batch_size": batch_size, "lr": lr, "warmup_frac": 0.1,
                "loss_space": "denoised", "seed": seed, "latent_shape": list(latent_shape),
                "final_loss": losses[-1] if losses else None}
    made = AdapterFile(adapters, fingerprint, architecture_of(model), tuple(float(v) for v in scale_range), training,
                       "GuidanceLab_AGDTrain node", base_parameter_count(model))
    return made, losses


__all__ = ["CHECKPOINT", "LOSS_LOG", "SingleProcess", "cfg_trajectories", "encode_prompts", "encode_with_empty",
           "fit", "generate", "sampled_rmse", "save_checkpoint", "student_module", "train_in_graph", "training_copy"]
