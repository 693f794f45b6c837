"""Interpolation smoothness (ISTD) of a default model with and without a Smooth-LoRA.

    .host/venv/bin/python -m tools.benchmark.smooth_istd \\
        --weights default_model/weights/guidance_lab_shapes32.safetensors \\
        --lora smooth_lora_shapes32.safetensors --pairs 20 --frames 16 [--strip strip.png] [--json out.json]

For each pair k: two seeds' starting noises (stock ``RandomNoise``, seeds first_seed + 2k and
first_seed + 2k + 1) and one prompt of the dataset's vocabulary (or two, ``--two-prompts``)
are turned into ``frames`` frames by the pack's Smooth Interpolate node (slerp of the noises,
lerp of the prompts), sampled in one batch by the stock ``SamplerCustomAdvanced`` (stock
``CFGGuider`` at ``--cfg``, ``KSamplerSelect``, ``BasicScheduler``), decoded by the stock
``VAEDecode`` and measured by the pack's ISTD node (std of the adjacent-frame distances,
multi-scale 1 - SSIM). The same noises, prompts and sampler run on the base model and on
the model with the LoRA applied by the pack's loader code (``nodes/bridge/lora.py``, through
ComfyUI's own LoRA machinery). The result is the mean ISTD over pairs for both, and the
relative reduction 1 - ISTD_lora / ISTD_base (the issue's target: at least 0.30).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tools.bootstrap import pack_with_host


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="a default-model .safetensors file")
    p.add_argument("--lora", type=Path, default=None, help="a Smooth-LoRA file (omit: the base model only)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="normal")
    p.add_argument("--first-seed", type=int, default=9000, help="pair k uses seeds first+2k and first+2k+1")
    p.add_argument("--two-prompts", action="store_true", help="interpolate between two prompts too")
    p.add_argument("--strip", type=Path, default=None, help="write the first pair's frames, base and LoRA, as a PNG")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def lora_model(model, lora, strength: float = 1.0):
    """The MODEL with the Smooth-LoRA file applied at ``strength`` by the pack's loader code; refuses a
    file with layers the model lacks (a measurement must not silently run with part of a LoRA)."""
    from safetensors.torch import load_file

    from guidance_lab.nodes.bridge.lora import apply_lora, plan_lora

    plan = plan_lora(model, load_file(str(lora), device="cpu"))
    if plan.unplaced or not plan.placed:
        raise ValueError(f"{lora}: {len(plan.unplaced)} of {plan.layers} layers do not fit this model "
                         f"(e.g. {plan.unplaced[:2]})")
    return apply_lora(model, plan, strength)[0]


def sample_interpolation(model, clip, vae, noise_a, noise_b, prompt_a, prompt_b, frames, args):
    """IMAGE (frames, 32, 32, 3) of one interpolation, through ComfyUI's own nodes."""
    import nodes
    from comfy_extras import nodes_custom_sampler as cs
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage

    from guidance_lab.nodes.smooth_interpolation import SmoothInterpolateNode

    def out(result):
        return tuple(result.args) if hasattr(result, "args") else tuple(result)

    encode = nodes.CLIPTextEncode().encode
    latent = out(EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=1))[0]
    noise, frames_latent, conditioning = out(SmoothInterpolateNode.execute(
        noise_a, noise_b, latent, encode(clip, prompt_a)[0], encode(clip, prompt_b)[0], frames))
    guider = out(cs.CFGGuider.execute(model, conditioning, encode(clip, "")[0], args.cfg))[0]
    sampler = out(cs.KSamplerSelect.execute(args.sampler))[0]
    sigmas = out(cs.BasicScheduler.execute(model, args.scheduler, args.steps, 1.0))[0]
    sampled = out(cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, frames_latent))[0]
    return nodes.VAEDecode().decode(vae, sampled)[0]


def istd_study(weights, lora=None, n_pairs: int = 20, frames: int = 16, **options) -> dict:
    """Mean ISTD over ``n_pairs`` interpolations of ``frames`` frames, without and (when ``lora``
    names a file) with the Smooth-LoRA; ``options`` are the CLI's (steps, cfg, sampler, ...).
    Returns {"base": {...}, "lora": {...}, "reduction": 1 - lora / base, "settings": {...}}."""
    pack_with_host()
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.bridge.default_model import load_default_model
    from guidance_lab.nodes.smooth_interpolation import SmoothnessNode

    args = parse_args(["--weights", str(weights), "--pairs", str(n_pairs), "--frames", str(frames)])
    for key, value in options.items():
        setattr(args, key, value)
    model, clip, vae, _meta = load_default_model(weights)
    variants = {"base": model}
    if lora is not None:
        variants["lora"] = lora_model(model, lora, args.strength)
    from tools.training.dataset import vocabulary_prompts

    vocabulary = vocabulary_prompts()
    results = {name: {"istd": [], "mean_distance": []} for name in variants}
    strip = {}
    for k in range(n_pairs):
        prompt_a = vocabulary[(k * 19) % len(vocabulary)]
        prompt_b = vocabulary[(k * 19 + 7) % len(vocabulary)] if args.two_prompts else prompt_a
        noise_a = cs.RandomNoise.execute(args.first_seed + 2 * k).args[0]
        noise_b = cs.RandomNoise.execute(args.first_seed + 2 * k + 1).args[0]
        for name, variant in variants.items():
            images = sample_interpolation(variant, clip, vae, noise_a, noise_b, prompt_a, prompt_b, frames, args)
            std, mean, _plot = SmoothnessNode.execute(images).args
            results[name]["istd"].append(std)
            results[name]["mean_distance"].append(mean)
            if k == 0:
                strip[name] = images
    summary = {name: {"mean_istd": statistics.fmean(r["istd"]), "mean_distance": statistics.fmean(r["mean_distance"]),
                      "per_pair_istd": r["istd"]} for name, r in results.items()}
    if "lora" in summary and summary["base"]["mean_istd"] > 0:
        summary["reduction"] = 1 - summary["lora"]["mean_istd"] / summary["base"]["mean_istd"]
    summary["settings"] = {"weights": str(weights), "lora": None if lora is None else str(lora), "pairs": n_pairs,
                           "frames": frames, "steps": args.steps, "cfg": args.cfg, "sampler": args.sampler,
                           "scheduler": args.scheduler, "first_seed": args.first_seed,
                           "two_prompts": args.two_prompts, "strength": args.strength}
    if args.strip is not None:
        from tools.image_grid import image_grid

        rows = list(strip)
        image_grid(args.strip, [[strip[r][i].cpu().numpy() for i in range(frames)] for r in rows],
                   [f"{r}: ISTD {results[r]['istd'][0]:.4f}" for r in rows], [str(i) for i in range(frames)],
                   label_width=160)
    return summary


def main(argv=None):
    args = parse_args(argv)
    pack_with_host()
    import torch

    torch.set_num_threads(args.threads)
    options = {k: v for k, v in vars(args).items() if k not in ("weights", "lora", "pairs", "frames", "json")}
    summary = istd_study(args.weights, args.lora, args.pairs, args.frames, **options)
    for name in ("base", "lora"):
        if name in summary:
            s = summary[name]
            print(f"{name:5} mean ISTD {s['mean_istd']:.4f}, mean adjacent distance {s['mean_distance']:.4f} "
                  f"({args.pairs} pairs x {args.frames} frames)")
    if "reduction" in summary:
        print(f"ISTD reduction with the LoRA: {100 * summary['reduction']:.1f}% (target >= 30%)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
