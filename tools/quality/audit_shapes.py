"""What the shape analyser reads in a default model's own samples: per prompted shape, how many
CFG samples it reads as that shape, the features of those it reads otherwise, and a contact
sheet of them to check by eye (the analyser is the instrument of every adherence number).

    .host/venv/bin/python -m tools.quality.audit_shapes --weights guidance_lab_vpred32.safetensors \\
        --shapes square circle --out docs/quality/vpred32

Samples: every colour x backdrop prompt of each shape, ``--seeds`` noise seeds, ComfyUI's
CFGGuider at ``--cfg`` with the empty negative, euler, 20 normal steps, decoded by the model's
VAE; in process, no server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.bootstrap import pack_with_host


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="guidance_lab_vpred32.safetensors", help="default-model file")
    p.add_argument("--shapes", nargs="+", default=["square", "circle"])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="folder for audit.json and misread.png")
    return p.parse_args(argv)


def sample(weights: str, prompts: list, seeds: int, cfg: float, steps: int):
    """[(prompt, seed, image HxWx3 in [0, 1])] of the model's CFG samples."""
    import comfy.samplers
    import torch

    from guidance_lab.default_model import WEIGHTS_DIR
    from guidance_lab.nodes.bridge.agd_training import encode_prompts
    from guidance_lab.nodes.bridge.default_model import load_default_model

    model, clip, vae, _ = load_default_model(WEIGHTS_DIR / weights)
    positive = encode_prompts(clip, prompts)
    negative = encode_prompts(clip, [""]).expand(len(prompts), -1, -1).contiguous()
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps).cpu()
    out = []
    for seed in range(seeds):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds([[positive, {}]], [[negative, {}]])
        guider.set_cfg(cfg)
        noise = torch.randn((len(prompts), 3, 32, 32), generator=torch.Generator().manual_seed(1000 + seed))
        latent = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                               disable_pbar=True, seed=seed)
        images = vae.decode(latent).float().clamp(0, 1).numpy()
        out += [(prompt, seed, image) for prompt, image in zip(prompts, images)]
    return out


def contact_sheet(images: list, path: Path, columns: int = 8, cell: int = 96) -> None:
    import numpy as np
    from PIL import Image

    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (cell * columns, cell * rows), (255, 255, 255))
    for i, image in enumerate(images):
        tile = Image.fromarray((np.asarray(image) * 255).round().astype(np.uint8)).resize((cell, cell), Image.NEAREST)
        sheet.paste(tile, (cell * (i % columns), cell * (i // columns)))
    sheet.save(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    pack_with_host()
    import torch

    from tools.quality.shapes import analyse
    from tools.training.dataset import BACKGROUNDS, COLOURS, prompt_of

    torch.set_num_threads(args.threads)
    prompts = [prompt_of(shape, colour, backdrop) for shape in args.shapes for colour in COLOURS
               for backdrop in BACKGROUNDS]
    read, misread, images = {}, [], []
    for prompt, seed, image in sample(args.weights, prompts, args.seeds, args.cfg, args.steps):
        wanted, found = prompt.split()[2], analyse(image)
        counts = read.setdefault(wanted, {})
        counts[found.shape] = counts.get(found.shape, 0) + 1
        if found.shape != wanted:
            misread.append({"prompt": prompt, "seed": seed, "read": found.shape,
                            "features": dict(zip(("hole", "solidity", "rect_fill", "lobes"),
                                                 [round(float(f), 3) for f in found.features]))})
            images.append(image)
    report = {"weights": args.weights, "cfg": args.cfg, "steps": args.steps, "seeds": args.seeds,
              "read_as": read, "misread": misread,
              "command": "python -m tools.quality.audit_shapes " + " ".join(sys.argv[1:])}
    print(json.dumps({k: v for k, v in report.items() if k != "misread"}, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "audit.json").write_text(json.dumps(report, indent=1))
        if images:
            contact_sheet(images, args.out / "misread.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
