"""Train a Smooth-LoRA (Smooth Diffusion, Guo et al., CVPR 2024) for one of the pack's default models.

    .host/venv/bin/python -m tools.training.smooth_lora \\
        --weights default_model/weights/guidance_lab_shapes32.safetensors \\
        --out smooth_lora_shapes32.safetensors --steps 2000

The default model (a file written by ``tools/training/train.py --export``) is loaded with
the pack's own loader (``nodes/bridge/default_model.py``) and frozen; a rank-r LoRA
(``--rank``, 8 by default, as released for SD1.5) goes on every attention projection of its
UNet (attn1 and attn2 of every transformer block: to_q, to_k, to_v, to_out.0), and only the
LoRA trains. The loss is

    L = L_denoise + reg_weight * L_reg

- ``L_denoise``: the mean squared error of the model's own prediction type, on the same
  data, caption noise, noise levels and noise as the base model's training (``train.training_batch`` and
  ``train.noised_inputs``, shared with ``train.py``): eps, v on the file's schedule (with
  zero terminal SNR when the file says so), or flow (ComfyUI's CONST, x = (1 - s) x0 + s eps,
  target eps - x0).
- ``L_reg``: the paper's step-wise variation regulariser, exactly as
  ``../shared/algorithms.md`` states it (see ``variation_norms`` and ``StepVariation``):
  x0_hat from the prediction; a random direction y ~ N(0, I) / sqrt(CHW) * sigma_t; g =
  grad_eps <x0_hat, y> (a double backward through the UNet, ``create_graph=True``); v =
  ||g|| per sample; a running average a <- a + 0.01 (mean v - a); L_reg = mean((v - a)^2).

  sigma_t is sqrt(1 - abar_t) for eps / v models: the coefficient of the noise in the
  model's input x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. For flow models the input is
  x = (1 - s) x0 + s eps, whose noise coefficient is s: the analogous scale is s (derived,
  not taken from the paper, which trains SD1.5 only). Both scale y with how much of the
  model's input the noise is at that level, so a unit move of eps is a move of size sigma_t in
  the input in both families, and v measures the same thing: the change of the predicted
  image per unit change of the noise, probed along a direction of the size the noise has
  there.

  Two decisions the algorithm text leaves open, decided here: a is initialised with the
  first batch's mean v (not 0, which would pull every v towards 0 for the first hundreds
  of steps of a short fine-tune and make the model insensitive to its noise instead of
  evenly sensitive), and the updated a is used in the step's L_reg (as StyleGAN2's
  path-length regulariser, which this one follows, does); a is held out of the gradient.

The file is written in exactly diffusers' attention-processor layout, the layout the
released SD1.5 Smooth-LoRA uses and the pack's Smooth-LoRA Loader reads (keys like
``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight`` and
``...up.weight``, no alpha, so the update is W + up @ down at strength 1); ComfyUI's module
names map to diffusers' with ComfyUI's own ``comfy.utils.unet_to_diffusers``. Its metadata
holds the base model's fingerprint (``nodes/bridge/fingerprint.py``), rank, regulariser
weight, steps, the commands that trained it and the final losses.

Reproducible from ``--seed`` / ``--data-seed``: batch k's data, noise and levels come from
``train.training_batch`` and y from a generator seeded by (seed, k), so a run continues
exactly where its last checkpoint (written atomically to
``~/.cache/guidance-lab/training/<run-name>/checkpoint.safetensors``, with the LoRA, the optimizer,
the step and the running average) left it. The attention inside the UNet is ComfyUI's plain
``attention_basic`` while training: the fused kernels (PyTorch SDPA on a GPU) have no double
backward.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

from tools.bootstrap import pack_with_host
from tools.paths import TRAINING_CACHE

FORMAT = "guidance_lab_smooth_lora/1"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# How far the running average of ||g|| moves towards each step's mean (the paper's 0.01).
AVERAGE_RATE = 0.01
# Settings that must match to resume a run from its checkpoint.
RUN_SETTINGS = ("rank", "reg_weight", "lr", "warmup", "batch_size", "seed", "data_seed", "p_uncond",
                "timesteps", "caption_noise", "precision")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="the default model's .safetensors file")
    p.add_argument("--out", required=True, type=Path, help="where to write the LoRA (.safetensors)")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps of the run")
    p.add_argument("--run-name", default=None,
                   help="checkpoint folder under ~/.cache/guidance-lab/training/ (default: smooth_lora_<out stem>)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--reg-weight", type=float, default=1.0, help="weight of the step-wise variation regulariser")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=20, help="linear learning-rate warm-up steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1, help="noise, levels, prompt dropout, y and LoRA init")
    p.add_argument("--data-seed", type=int, default=None,
                   help="dataset seed (default: the base model's training data seed)")
    p.add_argument("--p-uncond", type=float, default=0.15, help="prompt dropout (keeps CFG's uncond trained)")
    p.add_argument("--timesteps", choices=["uniform", "logit-normal"], default=None,
                   help="training noise levels (default: the base model's)")
    p.add_argument("--caption-noise", type=float, default=None,
                   help="share of captions with one attribute swapped (default: the base model's). On "
                        "exact captions the LoRA sharpens the conditional model, CFG then overshoots "
                        "(flow model, CFG 5: clipped pixels 0.17 -> 0.35, adherence -8 points)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="autocast of the forward pass; fp32 by default (the regulariser is a second derivative)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1 ...")
    p.add_argument("--benchmark", type=int, default=0, metavar="N",
                   help="time N training steps (no checkpoint, no file) and exit")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the LoRA

def lora_linear_class():
    import torch

    class LoRALinear(torch.nn.Module):
        """A frozen projection plus a trainable rank-r update: y = W x + b + up (down x),
        i.e. (W + up @ down) x + b, the weight ComfyUI's adapter builds at strength 1."""

        def __init__(self, base, rank: int, generator=None):
            super().__init__()
            self.base = base
            # diffusers' LoRALinearLayer init: down ~ N(0, 1/rank^2), up = 0 (starts as the base model).
            down = torch.randn(rank, base.in_features, generator=generator) / rank
            self.down = torch.nn.Parameter(down.to(base.weight.device))
            self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

        def forward(self, x, *args, **kwargs):
            import torch.nn.functional as F

            return self.base(x, *args, **kwargs) + F.linear(F.linear(x, self.down.to(x.dtype)),
                                                            self.up.to(x.dtype))

    return LoRALinear


def attention_projections(unet) -> list:
    """Names of every attention projection of the UNet (attn1/attn2 x to_q/k/v/out.0), in module order."""
    names = []
    for name, _module in unet.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in ("attn1", "attn2") and parts[-1] in ("to_q", "to_k", "to_v"):
            names.append(name)
        elif len(parts) >= 3 and parts[-3] in ("attn1", "attn2") and parts[-2:] == ["to_out", "0"]:
            names.append(name)
    return names


def add_lora(unet, rank: int, generator=None) -> dict:
    """Wrap every attention projection of ``unet`` in place; {module name: LoRALinear}."""
    LoRALinear = lora_linear_class()
    loras = {}
    for name in attention_projections(unet):
        parent_name, child = name.rsplit(".", 1)
        parent = unet.get_submodule(parent_name)
        wrapped = LoRALinear(getattr(parent, child) if not child.isdigit() else parent[int(child)], rank, generator)
        setattr(parent, child, wrapped)
        loras[name] = wrapped
    if not loras:
        raise ValueError("the UNet has no attention projections to put a LoRA on")
    return loras


def diffusers_layer_names(unet_config: dict) -> dict:
    """ComfyUI module name (``input_blocks.5.1.transformer_blocks.0.attn1.to_out.0``) -> diffusers
    LoRA layer name (``down_blocks.2.attentions.0.transformer_blocks.0.attn1.processor.to_out``),
    from ComfyUI's own ``unet_to_diffusers`` map (the one its LoRA loader reads the file with)."""
    import comfy.utils

    from guidance_lab.nodes.bridge.default_model import comfy_unet_config

    names = {}
    for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(comfy_unet_config(unet_config)).items():
        if not diffusers_key.endswith(".weight"):
            continue
        layer = diffusers_key[: -len(".weight")]
        if not any(layer.endswith(f".{a}.{p}") for a in ("attn1", "attn2") for p in PROJECTIONS):
            continue
        layer = layer[: -len(".0")] if layer.endswith(".to_out.0") else layer
        block, projection = layer.rsplit(".", 1)
        names[comfy_key[: -len(".weight")]] = f"{block}.processor.{projection}"
    return names


def lora_tensors(loras: dict, unet_config: dict) -> dict:
    """The LoRA as a diffusers attention-processor state dict (fp32, contiguous, on the CPU)."""
    names = diffusers_layer_names(unet_config)
    missing = sorted(set(loras) - set(names))
    if missing:
        raise ValueError(f"no diffusers name for {missing[:3]}: the UNet config does not describe this UNet")
    out = {}
    for name, lora in loras.items():
        out[f"{names[name]}_lora.down.weight"] = lora.down.detach().float().cpu().contiguous()
        out[f"{names[name]}_lora.up.weight"] = lora.up.detach().float().cpu().contiguous()
    return out


# ---------------------------------------------------------------- the regulariser

def predicted_x0(prediction: str, xt, out, alpha, sigma):
    """x0_hat from the UNet's output, for x_t = alpha x0 + sigma eps: eps models
    (x_t - sigma eps_hat) / alpha; v models alpha x_t - sigma v_hat (alpha^2 + sigma^2 = 1);
    flow x - s v_hat with sigma = s (ComfyUI's CONST)."""
    if prediction == "eps":
        return (xt - sigma * out) / alpha
    if prediction == "v":
        return alpha * xt - sigma * out
    if prediction == "flow":
        return xt - sigma * out
    raise ValueError(f"unknown prediction {prediction!r}")


def random_direction(shape, sigma, generator, device=None):
    """y ~ N(0, I) / sqrt(CHW) * sigma_t, per sample (sigma_t shaped (N, 1, 1, 1))."""
    import torch

    chw = math.prod(shape[1:])
    y = torch.randn(shape, generator=generator) / math.sqrt(chw)
    return y.to(device) * sigma


def variation_norms(x0_hat, noise, y):
    """v = ||grad_eps <x0_hat, y>|| per sample, differentiable (create_graph=True) so L_reg
    trains the weights by a double backward. ``noise`` is the leaf x_t was built from.
    Samples do not interact in the UNet, so the gradient of the batch sum is per sample."""
    import torch

    (g,) = torch.autograd.grad((x0_hat * y).sum(), noise, create_graph=True)
    return g.flatten(1).norm(dim=1)


class StepVariation:
    """The running average a of mean ||g|| and L_reg = mean((v - a)^2) (see the module docstring)."""

    def __init__(self, average=None, rate: float = AVERAGE_RATE):
        self.average, self.rate = average, rate

    def __call__(self, v):
        mean = float(v.detach().mean())
        self.average = mean if self.average is None else self.average + self.rate * (mean - self.average)
        return ((v - self.average) ** 2).mean()


# ---------------------------------------------------------------- the trainer

def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def plain_attention():
    """ComfyUI's attention_basic inside the UNet: every op has a double backward."""
    import comfy.ldm.modules.attention as attention

    attention.optimized_attention = attention.attention_basic
    attention.optimized_attention_masked = attention.attention_basic


class SmoothLoraTrainer:
    def __init__(self, args):
        import torch

        from guidance_lab.nodes.bridge import default_model as dm
        from guidance_lab.nodes.bridge.fingerprint import model_fingerprint

        self.args, self.torch = args, torch
        self.device = resolve_device(getattr(args, "device", "auto"))
        model, clip, _vae, meta = dm.load_default_model(args.weights)
        self.meta = meta
        self.prediction = meta.get("prediction", "eps")
        self.unet_config = meta["unet_config"]
        self.fingerprint = model_fingerprint(model)
        base_training = json.loads(meta.get("training_config", "{}"))
        if getattr(args, "data_seed", None) is None:
            args.data_seed = int(base_training.get("data_seed", 20261123))
        if getattr(args, "timesteps", None) is None:
            args.timesteps = base_training.get("timesteps", "uniform")
        if getattr(args, "caption_noise", None) is None:
            args.caption_noise = float(base_training.get("caption_noise", 0.0))
        sampling = model.get_model_object("model_sampling")
        if self.prediction == "flow":
            self.acp = None
        else:
            # alpha-bar exactly as train.alphas_cumprod: from ComfyUI's float32 sigmas of this file's schedule.
            self.acp = (1.0 / (1.0 + sampling.sigmas.double() ** 2)).float()
            if self.prediction == "eps" and float(self.acp.min()) <= 0:
                raise SystemExit(f"{args.weights}: an eps model on a zero-terminal-SNR schedule has no x0 "
                                 "estimate at the last level; the regulariser needs one")
        self.unet = model.model.diffusion_model
        for p in self.unet.parameters():
            p.requires_grad_(False)
        self.unet.to(self.device)
        gen = torch.Generator().manual_seed(args.seed)
        self.loras = add_lora(self.unet, args.rank, gen)
        self.clip_l = clip.cond_stage_model.clip_l
        self.tokenizer = dm.ShapesTokenizer()
        self._contexts = {}
        self.opt = torch.optim.AdamW(self.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.regulariser = StepVariation()
        self.step = 0
        self.history = []
        self.last = {}

    def parameters(self):
        return [p for lora in self.loras.values() for p in (lora.down, lora.up)]

    def context(self, prompts):
        """Text embeddings of the prompts from the frozen text encoder (each prompt encoded once)."""
        torch = self.torch
        for prompt in set(prompts) - set(self._contexts):
            tokens = [int(t) for t, _w in self.tokenizer.tokenize_with_weights(prompt)["l"][0]]
            with torch.no_grad():
                self._contexts[prompt] = self.clip_l([tokens])[0].float().to(self.device)
        return torch.cat([self._contexts[p] for p in prompts])

    def lr_at(self, step):
        return self.args.lr * min(1.0, (step + 1) / max(1, self.args.warmup))

    def losses(self, step):
        """(total, denoising loss, L_reg, mean v) of batch ``step`` with the current LoRA."""
        torch = self.torch
        from tools.training.train import noised_inputs, training_batch

        x0, prompts, u, noise = training_batch(self.args, step)
        x0, u, noise = x0.to(self.device), u.to(self.device), noise.to(self.device)
        reg_on = self.args.reg_weight != 0
        noise.requires_grad_(reg_on)
        acp = None if self.acp is None else self.acp.to(self.device)
        xt, timesteps, target, alpha, sigma = noised_inputs(self.prediction, acp, x0, u, noise)
        context = self.context(prompts)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.precision == "bf16"):
            out = self.unet(xt, timesteps=timesteps, context=context)
        out = out.float()
        denoise = torch.nn.functional.mse_loss(out, target)
        if not reg_on:
            zero = torch.zeros((), device=self.device)
            return denoise, denoise, zero, zero
        x0_hat = predicted_x0(self.prediction, xt, out, alpha, sigma)
        gen = torch.Generator().manual_seed(self.args.seed * 1_000_003 + step + 1 + (1 << 40))
        y = random_direction(tuple(x0.shape), sigma, gen, self.device)
        v = variation_norms(x0_hat, noise, y)
        reg = self.regulariser(v)
        return denoise + self.args.reg_weight * reg, denoise, reg, v.mean()

    def train_step(self):
        torch = self.torch
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        total, denoise, reg, mean_v = self.losses(self.step)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.last = {"loss": float(total.detach()), "denoise": float(denoise.detach()),
                     "reg": float(reg.detach()), "v": float(mean_v.detach()), "a": self.regulariser.average}
        return self.last

    # ------------------------------------------------------------ checkpoints and the file

    def state(self):
        return {"step": self.step, "args": run_settings(self.args), "fingerprint": self.fingerprint,
                "lora": {n: {"down": l.down.detach().cpu(), "up": l.up.detach().cpu()} for n, l in self.loras.items()},
                "opt": self.opt.state_dict(), "average": self.regulariser.average,
                "history": json.dumps(self.history), "last": json.dumps(self.last)}

    def save(self, path: Path):
        from guidance_lab.guiders import training_checkpoint

        path.parent.mkdir(parents=True, exist_ok=True)
        training_checkpoint.save(path, self.state())

    def load(self, path: Path):
        from guidance_lab.guiders import training_checkpoint

        torch = self.torch
        state = training_checkpoint.load(path)
        if state["fingerprint"] != self.fingerprint:
            raise SystemExit(f"checkpoint {path} was trained on another base model; use another --run-name")
        changed = {k: (state["args"].get(k), v) for k, v in run_settings(self.args).items()
                   if state["args"].get(k) != v}
        if changed:
            raise SystemExit(f"checkpoint {path} was made with other settings {changed}; use another --run-name")
        with torch.no_grad():
            for name, lora in self.loras.items():
                lora.down.copy_(state["lora"][name]["down"])
                lora.up.copy_(state["lora"][name]["up"])
        self.opt.load_state_dict(state["opt"])
        self.regulariser.average = state["average"]
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.last = json.loads(state.get("last", "{}"))
        return state

    def export(self, path: Path):
        from safetensors.torch import save_file

        tensors = lora_tensors(self.loras, self.unet_config)
        metadata = {
            "format": FORMAT,
            "layout": "diffusers attention processor (<block>.processor.<to_q|to_k|to_v|to_out>_lora."
                      "<down|up>.weight), no alpha: W + up @ down at strength 1",
            "method": "Smooth Diffusion (Guo et al., CVPR 2024): denoising loss + step-wise variation regulariser",
            "base_model": Path(self.args.weights).name,
            "base_fingerprint": self.fingerprint,
            "base_prediction": self.prediction,
            "rank": str(self.args.rank),
            "reg_weight": str(self.args.reg_weight),
            "steps": str(self.step),
            "layers": str(len(self.loras)),
            "training_config": json.dumps(run_settings(self.args), sort_keys=True),
            "history": json.dumps(self.history),
            "command": self.history[-1]["command"] if self.history else "",
            "final_loss": str(self.last.get("loss")),
            "final_denoise_loss": str(self.last.get("denoise")),
            "final_reg": str(self.last.get("reg")),
            "running_average": str(self.regulariser.average),
        }
        from guidance_lab.guiders.atomic_file import write_atomically

        return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def run_settings(args) -> dict:
    return {k: getattr(args, k) for k in RUN_SETTINGS}


def main(argv=None):
    args = parse_args(argv)
    pack_with_host()
    import torch

    torch.set_num_threads(args.threads)
    plain_attention()
    run_name = args.run_name or f"smooth_lora_{args.out.stem}"
    run_dir = TRAINING_CACHE / run_name
    checkpoint = run_dir / "checkpoint.safetensors"  # no pickle: guiders/training_checkpoint.py

    trainer = SmoothLoraTrainer(args)
    n = sum(p.numel() for p in trainer.parameters())
    print(f"{args.weights.name} ({trainer.prediction}): LoRA rank {args.rank} on {len(trainer.loras)} attention "
          f"projections, {n / 1e3:.1f} k parameters; reg weight {args.reg_weight:g}; device {trainer.device}",
          flush=True)
    if args.benchmark:
        from tools.training.train import seconds_per_step

        per = seconds_per_step(trainer.train_step, args.benchmark)
        print(f"{per:.3f} s/step (batch {args.batch_size}, {torch.get_num_threads()} threads), "
              f"~{3600 / per:.0f} steps/hour")
        return

    if checkpoint.exists():
        trainer.load(checkpoint)
        print(f"resuming {checkpoint} at step {trainer.step}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer.history.append({"command": " ".join(["smooth_lora.py"] + list(sys.argv[1:] if argv is None else argv)),
                            "from_step": trainer.step, "run": run_name,
                            "hardware": f"{platform.machine()} {trainer.device}, {torch.get_num_threads()} threads"})
    from tqdm import tqdm

    log = open(run_dir / "loss.jsonl", "a")
    bar = tqdm(total=args.steps, initial=trainer.step, desc=run_name, mininterval=2)
    started = time.perf_counter()
    while trainer.step < args.steps:
        last = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{last['denoise']:.4f}", reg=f"{last['reg']:.3g}", v=f"{last['v']:.3g}",
                        refresh=False)
        log.write(json.dumps({"step": trainer.step, **{k: round(v, 6) for k, v in last.items()},
                              "time": round(time.time(), 1)}) + "\n")
        if trainer.step % args.checkpoint_every == 0 or trainer.step == args.steps:
            log.flush()
            trainer.save(checkpoint)
    bar.close()
    log.close()
    path = trainer.export(args.out)
    print(f"done: step {trainer.step} ({time.perf_counter() - started:.0f} s this session); wrote {path} "
          f"({path.stat().st_size / 1e3:.0f} kB); last loss {trainer.last}", flush=True)


if __name__ == "__main__":
    main()
