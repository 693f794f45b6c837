"""Score the default model through ComfyUI in-process: adherence and saturation per CFG scale.

    .host/venv/bin/python default_model/evaluate.py            # 64 prompts, CFG 1 / 5 / 15
    .host/venv/bin/python default_model/evaluate.py --grid docs/default_model_samples.png

Loads the weights with the pack's Default Model Loader node, encodes each prompt with the
stock CLIPTextEncode, samples with the stock KSampler (euler, normal schedule, one batch,
one conditioning row per image) from EmptyChromaRadianceLatentImage, decodes with the stock
VAEDecode, and scores with ``quality.shapes``. The prompts are those of held-out dataset
samples (``--eval-seed``, not the training data seed); the dataset's own saturation is
measured on those same samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import REPO, import_pack  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="guidance_lab_shapes32.safetensors",
                   help="file name in default_model/weights/")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 5.0, 15.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="normal")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the batch")
    p.add_argument("--eval-seed", type=int, default=777, help="dataset seed the prompts come from")
    p.add_argument("--grid", type=Path, default=None, help="also write a PNG grid (prompts x cfg)")
    p.add_argument("--grid-rows", type=int, default=8)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def sample_images(model, clip, vae, prompts, cfg, args):
    """IMAGE (N, 32, 32, 3) for the prompts at one CFG scale, through stock nodes."""
    import torch

    import nodes
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage

    encode = nodes.CLIPTextEncode().encode
    rows = [encode(clip, p)[0][0][0] for p in prompts]
    positive = [[torch.cat(rows), {}]]
    negative = encode(clip, "")[0]
    latent = EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=len(prompts)).args[0]
    (out,) = nodes.KSampler().sample(model, args.seed, args.steps, cfg, args.sampler, args.scheduler,
                                     positive, negative, latent)
    return nodes.VAEDecode().decode(vae, out)[0]


def write_grid(path: Path, prompts, images_by_cfg: dict, rows: int):
    from guidance_lab.diagnostics.image_grid import image_grid

    cfgs = list(images_by_cfg)
    tiles = [[images_by_cfg[cfg][i].cpu().numpy() for cfg in cfgs] for i in range(rows)]
    image_grid(path, tiles, prompts[:rows], [f"CFG {cfg:g}" for cfg in cfgs])


def main(argv=None):
    args = parse_args(argv)
    import_pack()
    import torch

    torch.set_num_threads(args.threads)
    from guidance_lab.default_model.dataset import make_batch
    from guidance_lab.nodes.default_model import DefaultModelLoaderNode
    from guidance_lab.quality.shapes import label_accuracy, saturation_stats

    model, clip, vae = DefaultModelLoaderNode.execute(args.weights).args
    real, prompts, _ = make_batch(args.eval_seed, 0, args.count, 32)
    results = {"weights": args.weights, "count": args.count, "steps": args.steps, "sampler": args.sampler,
               "scheduler": args.scheduler, "seed": args.seed, "eval_seed": args.eval_seed,
               "dataset": {**saturation_stats(real), **label_accuracy(real, prompts)}, "cfg": {}}
    images = {}
    for cfg in args.cfg:
        start = time.perf_counter()
        images[cfg] = sample_images(model, clip, vae, prompts, cfg, args)
        results["cfg"][f"{cfg:g}"] = {**label_accuracy(images[cfg], prompts), **saturation_stats(images[cfg]),
                                      "seconds": round(time.perf_counter() - start, 1)}
    print(f"{'':10} {'adherence':>9} {'shape':>6} {'colour':>6} {'backgr':>6} {'clipped':>8} "
          f"{'sat':>6} {'chroma':>6}")
    for name, r in [("dataset", results["dataset"])] + [(f"CFG {k}", v) for k, v in results["cfg"].items()]:
        print(f"{name:10} {r['adherence']:9.3f} {r['shape']:6.3f} {r['colour']:6.3f} {r['background']:6.3f} "
              f"{r['clipped_fraction']:8.4f} {r['mean_saturation']:6.3f} {r['mean_chroma']:6.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.grid:
        write_grid(args.grid, prompts, images, min(args.grid_rows, args.count))
        print(f"grid: {args.grid}")
    return results


if __name__ == "__main__":
    main()
