"""Score a default model through ComfyUI in-process: adherence, background, saturation and
scene distance per CFG scale, on every prompt of the vocabulary.

    .host/venv/bin/python -m tools.training.evaluate --weights <file>            # 144 prompts x CFG 1/3/5/7/15
    .host/venv/bin/python -m tools.training.evaluate --weights <file> --grid docs/<name>.png --json out.json

Loads the weights with the pack's Default Model Loader node, encodes each prompt with the
stock CLIPTextEncode, samples with the stock KSampler (euler, normal schedule, 20 steps,
one batch with one conditioning row per image) from EmptyChromaRadianceLatentImage,
decodes with the stock VAEDecode, and scores with ``tools.quality``. The prompts are every
shape x colour x background of the vocabulary (144), each ``--repeats`` times; the noise
seed (``--seed``) is one the training never used (training draws its noise from its own
generator). Real images of another dataset seed (``--eval-seed``) give the reference for
the scene distance, the dataset's own saturation and the analyser's accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tools.bootstrap import import_pack as import_checkout
from tools.bootstrap import pack_with_host as import_pack

import_checkout()
from guidance_lab.default_model import DEFAULT_WEIGHTS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="file name in default_model/weights/, or a path to any weights file")
    p.add_argument("--repeats", type=int, default=1, help="images per prompt (each with its own noise)")
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.0, 15.0])
    p.add_argument("--real", type=int, default=1000, help="real images for the scene-distance reference")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="normal")
    p.add_argument("--seed", type=int, default=424242, help="noise seed of the batch")
    p.add_argument("--eval-seed", type=int, default=777, help="dataset seed the prompts come from")
    p.add_argument("--grid", type=Path, default=None, help="also write a PNG grid (prompts x cfg)")
    p.add_argument("--grid-rows", type=int, default=8)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora", type=Path, default=None,
                   help="score the model with this Smooth-LoRA applied (does the regulariser keep adherence?)")
    p.add_argument("--lora-strength", type=float, default=1.0, help="the LoRA's strength (as the loader node's)")
    return p.parse_args(argv)


def load_weights(weights: str):
    """(MODEL, CLIP, VAE): a shipped file by name through the loader node, or any file by path."""
    if "/" in weights:  # a file elsewhere (a checkpoint export under evaluation), not a shipped one
        from guidance_lab.nodes.bridge.default_model import load_default_model

        return load_default_model(Path(weights))[:3]
    from guidance_lab.nodes.default_model import DefaultModelLoaderNode

    return DefaultModelLoaderNode.execute(weights).args


def batched_conditioning(clip, prompts):
    """(positive, negative) for one batch, one conditioning row per prompt, the empty prompt as
    the negative, through the stock CLIPTextEncode."""
    import torch

    import nodes

    encode = nodes.CLIPTextEncode().encode
    conds = [encode(clip, p)[0][0] for p in prompts]
    # The DiT's pooled text vector (Flux's modulation input) goes with the batch.
    extra = {"pooled_output": torch.cat([c[1]["pooled_output"] for c in conds])} \
        if all(c[1].get("pooled_output") is not None for c in conds) else {}
    return [[torch.cat([c[0] for c in conds]), extra]], encode(clip, "")[0]


def sample_images(model, clip, vae, prompts, cfg, args):
    """IMAGE (N, 32, 32, 3) for the prompts at one CFG scale, through stock nodes."""
    import nodes
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage

    positive, negative = batched_conditioning(clip, prompts)
    latent = EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=len(prompts)).args[0]
    (out,) = nodes.KSampler().sample(model, args.seed, args.steps, cfg, args.sampler, args.scheduler,
                                     positive, negative, latent)
    return nodes.VAEDecode().decode(vae, out)[0]


def write_grid(path: Path, prompts, images_by_cfg: dict, rows: int):
    from tools.image_grid import image_grid

    cfgs = list(images_by_cfg)
    tiles = [[images_by_cfg[cfg][i].cpu().numpy() for cfg in cfgs] for i in range(rows)]
    image_grid(path, tiles, prompts[:rows], [f"CFG {cfg:g}" for cfg in cfgs])


def main(argv=None):
    args = parse_args(argv)
    import_pack()
    import torch

    torch.set_num_threads(args.threads)
    from tools.training.dataset import make_batch
    from tools.quality.shapes import label_accuracy, saturation_stats

    from tools.quality.metrics import scene_distance, scene_features

    model, clip, vae = load_weights(args.weights)
    if args.lora is not None:
        from tools.benchmark.smooth_istd import lora_model

        model = lora_model(model, args.lora, args.lora_strength)
    from tools.training.dataset import vocabulary_prompts

    prompts = vocabulary_prompts() * args.repeats
    real, real_prompts, _ = make_batch(args.eval_seed, 0, args.real, 32)
    real_features = scene_features(real)
    results = {"weights": args.weights, "lora": None if args.lora is None else str(args.lora),
               "lora_strength": args.lora_strength,
               "prompts": len(prompts), "steps": args.steps, "sampler": args.sampler,
               "scheduler": args.scheduler, "seed": args.seed, "eval_seed": args.eval_seed,
               "dataset": {**saturation_stats(real), **label_accuracy(real, real_prompts),
                           "scene_distance": scene_distance(real[: len(real) // 2], real_features[len(real) // 2:])},
               "cfg": {}}
    images = {}
    for cfg in args.cfg:
        start = time.perf_counter()
        images[cfg] = sample_images(model, clip, vae, prompts, cfg, args)
        results["cfg"][f"{cfg:g}"] = {**label_accuracy(images[cfg], prompts), **saturation_stats(images[cfg]),
                                      "scene_distance": scene_distance(images[cfg].cpu().numpy(), real_features),
                                      "seconds": round(time.perf_counter() - start, 1)}
    print(f"{len(prompts)} prompts; dataset row = {args.real} real images (analyser accuracy on real data)")
    print(f"{'':10} {'adherence':>9} {'shape':>6} {'colour':>6} {'backgr':>6} {'clipped':>8} "
          f"{'sat':>6} {'chroma':>6} {'scene d':>8}")
    for name, r in [("dataset", results["dataset"])] + [(f"CFG {k}", v) for k, v in results["cfg"].items()]:
        print(f"{name:10} {r['adherence']:9.3f} {r['shape']:6.3f} {r['colour']:6.3f} {r['background']:6.3f} "
              f"{r['clipped_fraction']:8.4f} {r['mean_saturation']:6.3f} {r['mean_chroma']:6.3f} "
              f"{r['scene_distance']:8.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.grid:
        # Rows spread over the vocabulary: every 19th prompt visits each shape, colour and backdrop.
        rows = [(i * 19) % len(prompts) for i in range(min(args.grid_rows, len(prompts)))]
        write_grid(args.grid, [prompts[i] for i in rows], {c: images[c][rows] for c in images}, len(rows))
        print(f"grid: {args.grid}")
    return results


if __name__ == "__main__":
    main()
