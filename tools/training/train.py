"""Train the pack's default model (see README.md here) on the procedural shapes dataset.

    .host/venv/bin/python -m tools.training.train --run-name shapes32 --steps 4000
    .host/venv/bin/python -m tools.training.train --run-name shapes32 \
        --export default_model/weights/guidance_lab_shapes32.safetensors

Reproducible from ``--seed`` / ``--data-seed``: batch ``k`` is samples ``k*B .. k*B+B-1`` of
the dataset and its noise, timesteps and prompt dropout come from a generator seeded by
(seed, k), so a run restarted from a checkpoint continues exactly where it was. Checkpoints
(weights, EMA, optimizer, step) are written atomically to
``~/.cache/guidance-lab/training/<run-name>/checkpoint.safetensors``; the loss log is ``loss.jsonl``
beside it. ``--export`` writes the EMA weights of the latest checkpoint as the shipped
safetensors file (fp16) with the training config in its metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from tools.bootstrap import pack_with_host as import_pack
from tools.paths import TRAINING_CACHE

CHECKPOINT = "checkpoint.safetensors"  # tensors and settings, no pickle (guiders/training_checkpoint.py)
# Settings of one command, not of the run: they may change when it resumes or exports.
PER_COMMAND = ("steps", "checkpoint_every", "threads", "device", "export", "benchmark", "max_minutes",
               "precision", "init_from", "finetune_from", "text_encoder_from", "loader_workers")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-name", default="shapes32")
    p.add_argument("--steps", type=int, default=4000, help="total optimizer steps of the run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--p-uncond", type=float, default=0.15, help="prompt dropout: share of empty prompts")
    p.add_argument("--caption-noise", type=float, default=0.0,
                   help="share of training captions with one attribute (shape, colour or backdrop) "
                        "swapped for another, as web captions often miss: the conditional model then "
                        "follows the prompt only mostly, and guidance is what makes it follow (CFG 1 vs 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=20261123)
    p.add_argument("--architecture", choices=["unet", "flux"], default="unet",
                   help="the denoising network: ComfyUI's UNetModel, or ComfyUI's Flux DiT (joint attention "
                        "to the text at every block; flow prediction only)")
    p.add_argument("--hidden-size", type=int, default=128, help="flux: token width")
    p.add_argument("--num-heads", type=int, default=4, help="flux: attention heads")
    p.add_argument("--depth", type=int, default=3, help="flux: double-stream blocks")
    p.add_argument("--depth-single", type=int, default=6, help="flux: single-stream blocks")
    p.add_argument("--patch-size", type=int, default=2, help="flux: pixels per token side")
    p.add_argument("--rope-theta", type=int, default=10000,
                   help="flux: RoPE base (Flux's 10000 is made for 64+ tokens a side; on a 16-token grid "
                        "most of its frequencies barely turn across the image, ~100 spreads them over it)")
    p.add_argument("--model-channels", type=int, default=32)
    p.add_argument("--res-blocks", type=int, default=1, help="UNet residual blocks per level")
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--prediction", choices=["eps", "v", "flow"], default="eps",
                   help="what the UNet predicts: the noise (eps), v = sqrt(a) eps - sqrt(1 - a) x0 (both on "
                        "the discrete SD schedule), or the rectified-flow velocity eps - x0 (flow: ComfyUI's "
                        "CONST model sampling, x = (1 - s) x0 + s eps)")
    p.add_argument("--shift", type=float, default=1.0,
                   help="flow only: ComfyUI's ModelSamplingDiscreteFlow shift recorded for sampling")
    p.add_argument("--timesteps", choices=["uniform", "logit-normal"], default="uniform",
                   help="training noise levels: uniform, or logit-normal (SD3's, mean 0 std 1) over the "
                        "schedule's [0, 1] position, which spends more steps on the middle levels where "
                        "shape and colour are decided")
    p.add_argument("--timestep-mean", type=float, default=0.0,
                   help="logit-normal only: the normal's mean m in u = sigmoid(m + n) (SD3's lognorm(m, 1)); "
                        "below 0 moves the busiest levels lower; the median level is sigmoid(m), 0.38 at -0.5")
    p.add_argument("--channel-mult", default="1,2,2", help="UNet channel multipliers per level")
    p.add_argument("--attention-levels", type=int, default=1,
                   help="how many of the lowest-resolution levels carry a transformer (plus the middle)")
    p.add_argument("--zsnr", action="store_true",
                   help="rescale the schedule to zero terminal SNR (ComfyUI's zsnr; use with v): at 32x32 "
                        "SD's last noise level still shows the image mean (SNR ~1), so an eps model takes "
                        "the backdrop's colour from the starting noise instead of the prompt")
    p.add_argument("--finetune-from", default=None, metavar="RUN",
                   help="start a new run at step 0 (fresh optimizer and schedule) from the EMA weights of run "
                        "RUN's latest checkpoint, e.g. the flow model as the start of the v-prediction one, "
                        "or from an exported .safetensors default-model file of the same architecture")
    p.add_argument("--text-encoder-from", default=None, metavar="FILE",
                   help="start a new run with the text encoder of an exported default-model file (the same "
                        "text config), e.g. a DiT beside the trained UNets' encoder; the network starts fresh")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start a new run from the latest checkpoint of run RUN (weights, EMA, optimizer, "
                        "step), e.g. to fine-tune with other settings")
    p.add_argument("--teacher", default=None, metavar="FILE",
                   help="an exported default model of the same prediction type whose predictions are "
                        "blended into the target (knowledge distillation; see --teacher-weight)")
    p.add_argument("--teacher-weight", type=float, default=0.0,
                   help="share of the teacher's prediction in the target: (1 - w) * data target + "
                        "w * teacher; 0 trains on the data alone")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="where the networks train (cpu, cuda, cuda:1 ...); batches are drawn on the CPU from "
                        "the same seeds and moved, so a run may change device when it resumes")
    p.add_argument("--loader-workers", type=int, default=0, metavar="N",
                   help="draw the next batches in N worker processes while the network trains (the same "
                        "batches, in order): on a GPU, rendering a large batch on one core takes longer "
                        "than the step; 0 draws each batch in the training process")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="autocast of the forward pass (weights and optimizer stay fp32); bf16 is "
                        "about 1.5x faster on CPUs with AVX512-BF16")
    p.add_argument("--export", type=Path, default=None, metavar="PATH",
                   help="write the EMA weights of the latest checkpoint to PATH and exit")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="stop, with a checkpoint, after the step that passes M minutes of training (a time "
                        "box for a device call or the end of a session); the same command resumes")
    p.add_argument("--benchmark", type=int, default=0, metavar="N",
                   help="time N training steps (no checkpoint) and exit")
    return p.parse_args(argv)


def flux_config(args) -> dict:
    """Flux's network config: rotary axes (index, row, column) splitting the head width."""
    from guidance_lab.nodes.bridge import default_model as dm

    head = args.hidden_size // args.num_heads
    side = (head * 7 // 16) // 2 * 2
    return dict(dm.DEFAULT_FLUX_CONFIG, hidden_size=args.hidden_size, num_heads=args.num_heads, depth=args.depth,
                depth_single_blocks=args.depth_single, patch_size=args.patch_size, context_in_dim=args.text_width,
                vec_in_dim=args.text_width, axes_dim=[head - 2 * side, side, side],
                theta=getattr(args, "rope_theta", dm.DEFAULT_FLUX_CONFIG["theta"]))


def configs(args):
    from guidance_lab.nodes.bridge import default_model as dm

    if getattr(args, "architecture", "unet") == "flux":
        unet = flux_config(args)
        text = dict(dm.DEFAULT_TEXT_CONFIG, hidden_size=args.text_width, num_hidden_layers=args.text_layers,
                    intermediate_size=4 * args.text_width, num_attention_heads=max(1, args.text_width // 16))
        return unet, text
    mult = [int(m) for m in str(getattr(args, "channel_mult", "1,2,2")).split(",")]
    unet = dict(dm.DEFAULT_UNET_CONFIG, model_channels=args.model_channels, context_dim=args.text_width,
                channel_mult=mult)
    levels, n = len(mult), args.res_blocks
    att = min(levels, max(0, getattr(args, "attention_levels", 1)))
    # Transformers on the `att` lowest-resolution levels (plus the middle block).
    unet.update(num_res_blocks=n, transformer_depth=[0] * (levels - att) * n + [1] * att * n,
                transformer_depth_output=[0] * (levels - att) * (n + 1) + [1] * att * (n + 1))
    text = dict(dm.DEFAULT_TEXT_CONFIG, hidden_size=args.text_width, num_hidden_layers=args.text_layers,
                intermediate_size=4 * args.text_width, num_attention_heads=max(1, args.text_width // 16))
    return unet, text


def differentiable_clip_layers(text_encoder) -> None:
    """ComfyUI's CLIPLayer adds its residuals in place (fine for inference, fatal for backward);
    the layers of the encoder being trained get the same sums out of place, on these
    instances only (ComfyUI's class stays as it is)."""
    import types

    import comfy.clip_model

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))

    for module in text_encoder.modules():
        if isinstance(module, comfy.clip_model.CLIPLayer):
            module.forward = types.MethodType(forward, module)


# ComfyUI ModelSamplingDiscrete settings (a model config's ``sampling_settings``): SD's schedule.
SAMPLING_SETTINGS = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}


def timestep_multiplier(args) -> float:
    """Flow: the network's timestep per unit sigma. Flux embeds t in [0, 1] itself (x1000 inside
    its timestep embedding), the UNet takes ComfyUI's 0..1000 scale."""
    return 1.0 if getattr(args, "architecture", "unet") == "flux" else 1000.0


def sampling_settings(args) -> dict:
    if getattr(args, "prediction", "eps") == "flow":
        return {"shift": float(getattr(args, "shift", 1.0)), "multiplier": timestep_multiplier(args)}
    return {**SAMPLING_SETTINGS, "zsnr": True} if getattr(args, "zsnr", False) else dict(SAMPLING_SETTINGS)


def alphas_cumprod(zsnr: bool = False):
    """alpha-bar of the discrete schedule, computed exactly as ComfyUI's ModelSamplingDiscrete does."""
    import torch

    from comfy.ldm.modules.diffusionmodules.util import make_beta_schedule
    from comfy.model_sampling import rescale_zero_terminal_snr_sigmas

    s = SAMPLING_SETTINGS
    betas = torch.as_tensor(make_beta_schedule(s["beta_schedule"], 1000, linear_start=s["linear_start"],
                                               linear_end=s["linear_end"]), dtype=torch.float64)
    acp = torch.cumprod(1.0 - betas, 0)
    sigmas = ((1 - acp) / acp) ** 0.5
    if zsnr:
        sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
    # float32 like ComfyUI's buffers: the model must see the sigmas it will be sampled with.
    sigmas = sigmas.float().double()
    return (1.0 / (1.0 + sigmas ** 2)).float()


def noisy_captions(prompts: list, share: float, seed: int) -> list:
    """Each caption, with probability ``share``, with one attribute swapped for another value
    (its own generator, so runs without caption noise keep their random streams)."""
    import numpy as np

    from tools.training.dataset import BACKGROUNDS, COLOURS, SHAPES, parse_prompt, prompt_of

    rng = np.random.default_rng([seed, 7])
    out = []
    for prompt in prompts:
        shape, colour, background = parse_prompt(prompt)
        if rng.random() < share:
            which = int(rng.integers(3))
            pick = lambda values, old: [v for v in values if v != old][int(rng.integers(len(values) - 1))]  # noqa: E731
            if which == 0:
                shape = pick(list(SHAPES), shape)
            elif which == 1:
                colour = pick(list(COLOURS), colour)
            else:
                background = pick(list(BACKGROUNDS), background)
        out.append(prompt_of(shape, colour, background))
    return out


def training_batch(args, step: int):
    """Batch ``step`` of a run: images as latents in [-1, 1] (N, 3, 32, 32), prompts (with
    dropout ``args.p_uncond``), noise levels u in [0, 1] and noise, all on the CPU and all
    reproducible from (``args.data_seed``, ``args.seed``, ``step``). Shared by every trainer
    of the default models (``tools.training.smooth_lora`` too)."""
    import torch

    from tools.training.dataset import make_batch

    b = args.batch_size
    images, prompts, _ = make_batch(args.data_seed, step * b, b, 32)
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2) * 2.0 - 1.0
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 1)
    drop = torch.rand(b, generator=gen) < args.p_uncond
    if getattr(args, "caption_noise", 0.0) > 0:
        prompts = noisy_captions(prompts, args.caption_noise, args.seed * 1_000_003 + step + 1)
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    if getattr(args, "timesteps", "uniform") == "logit-normal":
        u = torch.sigmoid(torch.randn(b, generator=gen) + getattr(args, "timestep_mean", 0.0))
    else:
        u = torch.rand(b, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return x0, prompts, u, noise


class BatchPrefetcher:
    """``training_batch(args, step)`` for consecutive steps, drawn ahead by worker processes.
    At most ``depth`` batches wait at a time: a queue that ran freely ahead of a slow
    training step would hold the whole run in memory."""

    def __init__(self, args, first_step: int, workers: int, depth: int | None = None):
        import collections
        import multiprocessing

        # spawn, not fork: the training process may hold a CUDA context, which a fork cannot share.
        self.pool = multiprocessing.get_context("spawn").Pool(workers)
        self.args, self.next_step, self.depth = args, first_step, depth or 2 * workers
        self.pending = collections.deque()

    def take(self, step: int):
        # By its module's name: under ``python -m`` this file is __main__, which a spawned worker lacks.
        from tools.training.train import training_batch as draw

        while len(self.pending) < self.depth and self.next_step < self.args.steps:
            self.pending.append((self.next_step, self.pool.apply_async(draw, (self.args, self.next_step))))
            self.next_step += 1
        drawn, result = self.pending.popleft()
        if drawn != step:
            raise RuntimeError(f"prefetched batch {drawn} where step {step} was asked for")
        return result.get()

    def close(self):
        self.pool.terminate()


def noised_inputs(prediction: str, acp, x0, u, noise):
    """(x_t, UNet timesteps, training target, alpha, sigma) for noise level u, with
    x_t = alpha * x0 + sigma * noise (alpha, sigma shaped (N, 1, 1, 1)).

    eps / v: the discrete schedule ``acp`` (alpha-bar, 1000 steps), t = floor(1000 u),
    alpha = sqrt(acp[t]), sigma = sqrt(1 - acp[t]); target eps, or v = alpha eps - sigma x0.
    flow: ComfyUI's CONST, x = (1 - s) x0 + s eps with s = u, timestep 1000 s, target eps - x0
    (what CONST turns back into x0 as x - s * out)."""
    if prediction == "flow":
        s = u.view(-1, 1, 1, 1)
        alpha, sigma = 1 - s, s
        xt, timesteps = (1 - s) * x0 + s * noise, u * 1000.0
        target = noise - x0
    else:
        t = (u * 1000).long().clamp(0, 999)
        a = acp.to(t.device)[t].view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        xt, timesteps = a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float()
        # v is what ComfyUI's V_PREDICTION turns back into x0 with c_skip / c_out.
        target = noise if prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    return xt, timesteps, target, alpha, sigma


def load_teacher(path: Path, device: str = "cpu") -> "Trainer":
    """The frozen network and text encoder of an exported default-model file, built with the
    settings its metadata records, on ``device`` (the source of distillation targets)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        saved = json.loads((f.metadata() or {}).get("training_config", "{}"))
    args = parse_args([])
    for key in vars(args):
        if key in saved:
            setattr(args, key, saved[key])
    args.teacher, args.teacher_weight, args.device = None, 0.0, device
    teacher = Trainer(args)
    teacher.load_exported(Path(path))
    for module in (teacher.unet, teacher.text):
        module.eval()
        module.requires_grad_(False)
    return teacher


class Trainer:
    def __init__(self, args):
        import torch

        from guidance_lab.nodes.bridge import default_model as dm
        from tools.training import networks
        from tools.training.dataset import vocabulary_prompts

        self.args, self.dm, self.torch = args, dm, torch
        self.unet_config, self.text_config = configs(args)
        gen = torch.Generator().manual_seed(args.seed)
        ops = __import__("comfy.ops", fromlist=["ops"]).disable_weight_init
        # The denoising network (a UNet or a DiT); "unet" in checkpoints whatever its architecture.
        self.unet = dm.build_network(getattr(args, "architecture", "unet"), self.unet_config, ops)
        networks.init_weights(self.unet, gen)
        if getattr(args, "architecture", "unet") == "flux":
            if args.prediction != "flow":
                sys.exit("--architecture flux trains flow prediction only (--prediction flow)")
            networks.zero_init_dit(self.unet)
        self.text = dm.build_text_encoder(self.text_config, ops)
        networks.init_weights(self.text, gen)
        differentiable_clip_layers(self.text)
        clip_l = self.text.clip_l
        table = clip_l.transformer.get_input_embeddings().weight
        with torch.no_grad():
            table.copy_(dm.seeded_token_table(self.text_config))
            clip_l.logit_scale.fill_(4.6055)
        clip_l.train()
        for p in self.text.parameters():
            p.requires_grad_(True)
        self.device = torch.device(getattr(args, "device", "cpu"))
        self.unet.to(self.device)
        self.text.to(self.device)
        self.tokenizer = dm.ShapesTokenizer()
        self.token_ids = networks.dataset_token_ids(self.tokenizer, vocabulary_prompts() + [""])
        self._tokens = {}
        self.acp = alphas_cumprod(getattr(args, 'zsnr', False))

        no_decay = [table] + [p for n, p in self.named_params() if p.ndim < 2 and p is not table]
        ids = {id(p) for p in no_decay}
        decay = [p for _n, p in self.named_params() if id(p) not in ids]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=args.lr, betas=(0.9, 0.99))
        self.ema = {n: p.detach().clone() for n, p in self.named_params()}
        self.teacher = None
        self.prefetcher = None  # a BatchPrefetcher when main() is given --loader-workers
        if getattr(args, "teacher", None) and getattr(args, "teacher_weight", 0.0) > 0:
            self.teacher = load_teacher(Path(args.teacher), str(self.device))
            if self.teacher.args.prediction != args.prediction:
                sys.exit(f"--teacher {args.teacher} predicts {self.teacher.args.prediction}, "
                         f"this run {args.prediction}: a teacher must predict the same target")
        self.step = 0
        # Every command that trained this run, with its step range and hardware: the file's provenance.
        self.history = []

    def named_params(self):
        yield from (("unet." + n, p) for n, p in self.unet.named_parameters())
        yield from (("text." + n, p) for n, p in self.text.named_parameters())

    def tokens(self, prompt):
        if prompt not in self._tokens:
            chunks = self.tokenizer.tokenize_with_weights(prompt)["l"]
            self._tokens[prompt] = [int(t) for t, _w in chunks[0]]
        return self._tokens[prompt]

    def batch(self, step):
        """Images as latents in [-1, 1], prompts (with dropout), noise and timesteps of batch ``step``."""
        if self.prefetcher is not None:
            return self.prefetcher.take(step)
        return training_batch(self.args, step)

    def lr_at(self, step):
        a = self.args
        warm = min(1.0, (step + 1) / max(1, a.warmup))
        progress = min(1.0, step / max(1, a.steps))
        return a.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def autocast(self):
        """bf16 autocast of the forward pass on the training device (``--precision``)."""
        torch = self.torch
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.precision == "bf16")

    def train_step(self):
        """One optimizer step, with the host's networks on their differentiable path
        (``training_mode``: 0.33's Flux RoPE kernel has no backward otherwise)."""
        from guidance_lab.nodes.bridge.compat import training_mode

        with training_mode():
            return self._train_step()

    def _train_step(self):
        torch = self.torch
        x0, prompts, u, noise = (v.to(self.device) if isinstance(v, torch.Tensor) else v
                                 for v in self.batch(self.step))
        xt, timesteps, target, _alpha, _sigma = noised_inputs(self.args.prediction, self.acp, x0, u, noise)
        flux = getattr(self.args, "architecture", "unet") == "flux"
        raw_timesteps = timesteps
        if flux:
            timesteps = timesteps * (timestep_multiplier(self.args) / 1000.0)
        with self.autocast():
            context, pooled = self.text.clip_l([self.tokens(p) for p in prompts])
            if flux:
                # Flux's blocks add their residuals in place (inference code): saved activations are
                # copied when autograd stores them, so backward sees the values it needs.
                with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                    out = self.unet(xt, timesteps, context, y=pooled)
            else:
                out = self.unet(xt, timesteps=timesteps, context=context)
        if self.teacher is not None:
            target = self.blend_teacher(target, xt, raw_timesteps, prompts)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _n, p in self.named_params()], 1.0)
        self.opt.step()
        decay = min(self.args.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for n, p in self.named_params():
                self.ema[n].lerp_(p.detach(), 1 - decay)
        self.step += 1
        return float(loss.detach())

    def blend_teacher(self, target, xt, timesteps, prompts):
        """(1 - w) * target + w * the teacher's prediction for the same noisy input and caption:
        the teacher's estimate of E[target | x_t, c] has far less variance than one sample's
        target, so a student learns what the teacher knows (shapes) in far fewer steps."""
        torch, teacher, w = self.torch, self.teacher, self.args.teacher_weight
        with torch.no_grad(), self.autocast():
            context, _pooled = teacher.text.clip_l([teacher.tokens(p) for p in prompts])
            predicted = teacher.unet(xt, timesteps=timesteps, context=context)
        return (1.0 - w) * target + w * predicted.float()

    # ------------------------------------------------------------ checkpoints

    def state(self):
        return {"step": self.step, "args": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in vars(self.args).items()},
                "unet": self.unet.state_dict(), "text": self.text.state_dict(),
                "ema": self.ema, "opt": self.opt.state_dict(), "history": json.dumps(self.history)}

    def save(self, path: Path):
        from guidance_lab.guiders import training_checkpoint

        training_checkpoint.save(path, self.state())

    def load(self, path: Path):
        from guidance_lab.guiders import training_checkpoint

        state = training_checkpoint.load(path)
        self.unet.load_state_dict(state["unet"])
        self.text.load_state_dict(state["text"])
        self.opt.load_state_dict(state["opt"])
        for n, v in state["ema"].items():
            self.ema[n].copy_(v)
        self.step = int(state["step"])
        self.history = json.loads(state.get("history", "[]"))
        return state

    def load_weights(self, path: Path):
        """Live and EMA weights from the EMA of another run's checkpoint; optimizer and step start fresh."""
        from guidance_lab.guiders import training_checkpoint

        state = training_checkpoint.load(path)
        with self.torch.no_grad():
            for n, p in self.named_params():
                p.copy_(state["ema"][n])
                self.ema[n].copy_(state["ema"][n])
        self.history = json.loads(state.get("history", "[]"))
        return state

    def load_exported(self, path: Path, text_only: bool = False):
        """Live and EMA weights from an exported default-model file (its history carries over);
        ``text_only``: the text encoder alone (a DiT started beside a trained UNet's encoder)."""
        from safetensors import safe_open

        torch = self.torch
        with safe_open(str(path), "pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            history = json.loads((f.metadata() or {}).get("history", "[]"))
            stored = json.loads((f.metadata() or {}).get("unet_config", "null")) or self.unet_config
        # Settings without tensors (RoPE theta) would load silently into a network built otherwise.
        differ = {k for k in stored.keys() | self.unet_config.keys() if stored.get(k) != self.unet_config.get(k)}
        if differ and not text_only:
            sys.exit(f"{path}: its network config differs from this run's in {sorted(differ)} "
                     f"(file: { {k: stored.get(k) for k in sorted(differ)} }); pass the matching settings")
        unet = {k[len("diffusion_model."):]: v for k, v in sd.items() if k.startswith("diffusion_model.")}
        text = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
        ids, rows = text.pop("token_ids"), text.pop("token_rows")
        clip_l = self.text.clip_l
        table = clip_l.state_dict()[self.dm.TOKEN_TABLE_KEY].clone()
        table[ids] = rows.float()
        text[self.dm.TOKEN_TABLE_KEY] = table
        if getattr(self.args, "architecture", "unet") == "flux" and not text_only:
            from guidance_lab.nodes.bridge.compat import flux_state_dict_for

            unet = flux_state_dict_for(self.unet, unet)
        with torch.no_grad():
            if not text_only:
                self.unet.load_state_dict({k: v.float() for k, v in unet.items()}, strict=True)
            missing, unexpected = clip_l.load_state_dict({k: v.float() for k, v in text.items()}, strict=False)
            if unexpected or [k for k in missing if "position_ids" not in k]:
                sys.exit(f"{path}: text encoder does not match this architecture "
                         f"(missing {missing}, unexpected {unexpected})")
            for n, p in self.named_params():
                self.ema[n].copy_(p)
        if text_only:
            self.history = [{"command": f"text encoder from {path.name}", "from_step": 0}]
        else:
            self.history = history or [{"command": f"exported file {path.name}", "from_step": 0}]

    def export(self, path: Path, checkpoint_args: dict, final_loss=None):
        from safetensors.torch import save_file

        from tools.training import networks

        torch = self.torch
        with torch.no_grad():
            live = {n: p.detach().clone() for n, p in self.named_params()}
            for n, p in self.named_params():
                p.copy_(self.ema[n])
            # state_dict() shares the parameters' storage: copy before the live weights go back.
            sd = {k: v.clone() for k, v in
                  networks.export_state_dict(self.unet, self.text, self.text_config, self.token_ids).items()}
            for n, p in self.named_params():
                p.copy_(live[n])
        sd = {k: (v.half() if v.is_floating_point() else v).cpu().contiguous() for k, v in sd.items()}
        metadata = {
            "format": self.dm.FORMAT,
            "unet_config": json.dumps(self.unet_config),
            "text_config": json.dumps(self.text_config),
            "training_config": json.dumps(checkpoint_args, sort_keys=True),
            "data_seed": str(checkpoint_args["data_seed"]),
            "seed": str(checkpoint_args["seed"]),
            "steps": str(self.step),
            "ema_decay": str(checkpoint_args["ema_decay"]),
            "family": "flow" if checkpoint_args.get("prediction") == "flow" else "eps",
            "architecture": checkpoint_args.get("architecture", "unet"),
            "history": json.dumps(self.history),
            "final_loss": str(final_loss),
            "prediction": checkpoint_args.get("prediction", "eps"),
            "sampling_settings": json.dumps(sampling_settings(argparse.Namespace(**checkpoint_args))),
            "latent": "pixel space: image in [0, 1] -> latent 2x-1 (ComfyUI pixel-space VAE)",
            "dataset": "tools.training.dataset.make_batch(data_seed, step*batch, batch, 32)",
        }
        from guidance_lab.guiders.atomic_file import write_atomically

        return write_atomically(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


def seconds_per_step(step, n: int) -> float:
    """Mean wall time of ``n`` calls of ``step`` after one untimed warm-up call (``--benchmark``)."""
    step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main(argv=None):
    args = parse_args(argv)
    import_pack()
    import torch

    torch.set_num_threads(args.threads)
    run_dir = TRAINING_CACHE / args.run_name
    checkpoint = run_dir / CHECKPOINT

    if args.export is not None:
        if not checkpoint.exists():
            sys.exit(f"no checkpoint at {checkpoint}: train first")
        from guidance_lab.guiders import training_checkpoint

        saved = training_checkpoint.load(checkpoint)["args"]
        defaults = vars(parse_args([]))
        for key in defaults.keys() - set(PER_COMMAND):  # the run's own settings, network ones included
            setattr(args, key, saved.get(key, defaults[key]))
        args.teacher = None  # the export needs no teacher
        trainer = Trainer(args)
        trainer.load(checkpoint)
        losses = (run_dir / "loss.jsonl").read_text().splitlines() if (run_dir / "loss.jsonl").exists() else []
        final_loss = json.loads(losses[-1])["loss"] if losses else None
        path = trainer.export(args.export, saved, final_loss)
        print(f"exported step {trainer.step} (EMA) to {path} ({path.stat().st_size / 1e6:.2f} MB)")
        return

    trainer = Trainer(args)
    n_unet = sum(p.numel() for p in trainer.unet.parameters())
    n_text = sum(p.numel() for p in trainer.text.parameters())
    print(f"{getattr(args, 'architecture', 'unet')} {n_unet / 1e6:.2f} M parameters, text encoder {n_text / 1e6:.2f} M "
          f"({len(trainer.token_ids)} token rows stored)", flush=True)

    if args.benchmark:
        per = seconds_per_step(trainer.train_step, args.benchmark)
        print(f"{per:.2f} s/step, {1 / per:.3f} steps/s, ~{3600 / per:.0f} steps/hour")
        return

    run_dir.mkdir(parents=True, exist_ok=True)
    if args.finetune_from and not checkpoint.exists() and args.finetune_from.endswith(".safetensors"):
        source = Path(args.finetune_from)
        trainer.load_exported(source)
        print(f"fine-tuning from the weights of {source}", flush=True)
    elif args.finetune_from and not checkpoint.exists():
        source = TRAINING_CACHE / args.finetune_from / CHECKPOINT
        trainer.load_weights(source)
        print(f"fine-tuning from the EMA weights of {source}", flush=True)
    elif args.text_encoder_from and not checkpoint.exists():
        trainer.load_exported(Path(args.text_encoder_from), text_only=True)
        print(f"text encoder from {args.text_encoder_from}", flush=True)
    elif args.init_from and not checkpoint.exists():
        source = TRAINING_CACHE / args.init_from / CHECKPOINT
        trainer.load(source)
        print(f"starting from {source} at step {trainer.step}", flush=True)
    elif checkpoint.exists():
        saved = trainer.load(checkpoint)["args"]
        defaults = vars(parse_args([]))
        changed = {k: (saved.get(k, defaults[k]), v) for k, v in vars(args).items()
                   if k not in PER_COMMAND and saved.get(k, defaults[k]) != (str(v) if isinstance(v, Path) else v)}
        if changed:
            sys.exit(f"checkpoint {checkpoint} was made with other settings {changed}; "
                     "use another --run-name")
        print(f"resuming {checkpoint} at step {trainer.step}", flush=True)
    (run_dir / "config.json").write_text(json.dumps(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, indent=1))

    import platform

    trainer.history.append({"command": " ".join(["train.py"] + list(sys.argv[1:] if argv is None else argv)),
                            "from_step": trainer.step, "run": args.run_name,
                            "hardware": (torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda"
                                         else f"{platform.machine()} {platform.processor() or 'cpu'}, "
                                              f"{torch.get_num_threads()} threads")})
    from tqdm import tqdm

    if args.loader_workers > 0:
        trainer.prefetcher = BatchPrefetcher(args, trainer.step, args.loader_workers)
    log = open(run_dir / "loss.jsonl", "a")
    bar = tqdm(total=args.steps, initial=trainer.step, desc=args.run_name, mininterval=5)
    window, started = [], time.perf_counter()
    while trainer.step < args.steps:
        loss = trainer.train_step()
        window.append(loss)
        bar.update(1)
        if trainer.step % 10 == 0:
            mean = sum(window) / len(window)
            bar.set_postfix(loss=f"{mean:.4f}")
            log.write(json.dumps({"step": trainer.step, "loss": round(mean, 6),
                                  "lr": trainer.lr_at(trainer.step - 1),
                                  "time": round(time.time(), 1)}) + "\n")
            log.flush()
            window = []
        out_of_time = args.max_minutes is not None and time.perf_counter() - started >= 60 * args.max_minutes
        if trainer.step % args.checkpoint_every == 0 or trainer.step == args.steps or out_of_time:
            trainer.save(checkpoint)
        if out_of_time:
            break
    bar.close()
    if trainer.prefetcher is not None:
        trainer.prefetcher.close()
    done = ("done" if trainer.step >= args.steps
            else f"time box of {args.max_minutes:g} min reached, checkpoint saved")
    print(f"{done}: step {trainer.step} of {args.steps}, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
