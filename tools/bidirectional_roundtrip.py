"""BDIA / O-BELM round-trip error on the pack's default models and on tiny random-weight SDXL,
SD3, Flux and Wan 2.1 models (built through ComfyUI's own classes, tests/host/tiny_families.py),
printed as the Markdown table of docs/methods/bidirectional.md: max relative error of the final
state against the latent it started from (model space), float64 pair beside float32 pair, at
5, 6, 49 and 50 steps, batch 1 and 3, and a partial schedule (denoise 0.6).

    .host/venv/bin/python -m tools.bidirectional_roundtrip [--quick]

The numbers say how exact the arithmetic is on each family's real network code, not how good
an edit looks (that is the benchmark's inversion section). A float32 cell reads "refused" where
BDIA / O-BELM Invert's rounding guard refuses the float32 pair (the growth it would carry).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from tools.bootstrap import ensure_host_importable, import_pack

CFG = 3.0
GAMMA = 0.96
PROMPT = "a red circle on a white background"
CASES = ((1, 5, 1.0), (3, 6, 1.0), (1, 49, 1.0), (3, 50, 1.0), (3, 50, 0.6))  # batch, steps, denoise


def out(result):
    return tuple(result.args) if hasattr(result, "args") else tuple(result)


def round_trip(model, pos, neg, latent, method: str, steps: int, denoise: float, precision: str,
               scheduler: str) -> str:
    """The max relative error of one round trip, formatted, or why Invert refused it."""
    from comfy_extras import nodes_custom_sampler as cs
    from guidance_lab.nodes.bidirectional import BidirectionalInvertNode
    from guidance_lab.nodes.bridge.bidirectional import bidirectional_sample
    from guidance_lab.nodes.edict import edict_policy
    from guidance_lab.nodes.guider_common import build_guider
    from guidance_lab.nodes.validation import NodeInputError

    sigmas = out(cs.BasicScheduler.execute(model, scheduler, steps, denoise))[0]
    try:
        pair = out(BidirectionalInvertNode.execute(model, pos, neg, CFG, sigmas, method, GAMMA, latent, precision))[0]
    except NodeInputError as err:
        if "rounding" not in str(err):
            raise
        return "refused"
    guider = build_guider("tool", model, pos, neg, lambda: edict_policy("tool", CFG, None, model))
    _, final = bidirectional_sample(guider, pair)
    start = model.get_model_object("latent_format").process_in(latent["samples"]).double()
    return f"{((final[1].cpu().double() - start).abs().max() / start.abs().max()).item():.1e}"


def _tiny_families():
    """tests/host/tiny_families.py, by path: the venv may hold another top-level ``tests``."""
    import importlib.util

    from tools.paths import REPO

    spec = importlib.util.spec_from_file_location("tiny_families", REPO / "tests" / "host" / "tiny_families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def models(quick: bool):
    """(name, MODEL, positive, negative, latent of batch b, scheduler) per model."""
    import nodes
    from guidance_lab.default_model import SHIPPED, WEIGHTS_DIR
    from guidance_lab.nodes.bridge.default_model import load_default_model
    tiny = _tiny_families()
    FAMILIES, tiny_model = tiny.FAMILIES, tiny.tiny_model

    for name in SHIPPED:
        model, clip, vae, meta = load_default_model(WEIGHTS_DIR / name)
        encode = nodes.CLIPTextEncode().encode
        pos, neg = encode(clip, PROMPT)[0], encode(clip, "")[0]

        def latent(batch, model=model, pos=pos, neg=neg, vae=vae):
            # An image the model made, through its VAE, as a user's edit starts.
            empty = {"samples": torch.zeros(batch, 3, 32, 32)}
            image = nodes.common_ksampler(model, 7, 20, 5.0, "euler", "normal", pos, neg, empty)[0]
            return {"samples": vae.encode(vae.decode(image["samples"]))}

        yield f"{name.removesuffix('.safetensors')} ({meta.get('prediction', 'eps')})", model, pos, neg, latent, "normal"
    for family in FAMILIES[:1] if quick else FAMILIES:
        model, pos, neg, shape = tiny_model(family)

        def latent(batch, shape=shape):
            return {"samples": torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))}

        yield f"tiny {family}", model, pos, neg, latent, "simple"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases (a smoke run)")
    args = parser.parse_args()
    import_pack()
    ensure_host_importable()
    import comfy.utils
    from guidance_lab.samplers.bidirectional import METHODS

    comfy.utils.set_progress_bar_enabled(False)
    t0 = time.time()
    cases = CASES[:2] if args.quick else CASES
    print(f"Round trip at CFG {CFG} (BDIA gamma {GAMMA}), max relative error of the final state, "
          "float64 pair / float32 pair:\n")
    print("| model | method | " + " | ".join(f"batch {b}, {n} steps" + ("" if d == 1.0 else f", denoise {d:g}")
                                        for b, n, d in cases) + " |")
    print("|---|---|" + "---:|" * len(cases))
    for name, model, pos, neg, latent_of, scheduler in models(args.quick):
        latents = {b: latent_of(b) for b in {b for b, _, _ in cases}}
        for method in METHODS:
            cells = [" / ".join(round_trip(model, pos, neg, latents[b], method, n, d, precision, scheduler)
                                for precision in ("float64", "float32")) for b, n, d in cases]
            print(f"| {name} | {method} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
