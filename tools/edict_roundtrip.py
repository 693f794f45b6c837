"""EDICT round-trip error on an SD1.5-family checkpoint run as eps, v-prediction and flow
model, printed as the Markdown tables of docs/methods/edict.md (``--default-models``: the table
between its ``roundtrip:default-models`` markers): against DDIM inversion
at 50 steps, and how the error grows with the steps, the mixing weight p and a float32 state.

    .host/venv/bin/python -m tools.edict_roundtrip [--checkpoint PATH] [--quick]
    .host/venv/bin/python -m tools.edict_roundtrip --default-models

By default the test fixture (a tiny random-weight SD1.5-family model, built by the host
tests into the fixture cache) on the CPU, about an hour on two shared cores: the numbers
say how exact the arithmetic is, not how good an edit looks. ``--default-models`` prints the
round-trip table for the pack's trained default models instead (each in its own family,
on images the model made, encoded by its VAE; a few minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tools.bootstrap import ensure_host_importable, import_pack
from tools.paths import FIXTURE_CACHE

CFG = 3.0
FIXTURE = "guidance_lab_sd15_tiny_v1_s0.safetensors"


def setup(checkpoint: Path):
    import_pack()
    ensure_host_importable()
    import comfy.sd
    import comfy.utils
    import nodes

    comfy.utils.set_progress_bar_enabled(False)  # no tqdm bars between the table rows
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} not found: run the host tests once (they build the fixture) "
                         f"or pass --checkpoint")
    model, clip = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False)[:2]

    def encode(text):
        return nodes.CLIPTextEncode().encode(clip, text)[0]

    return model, encode("a red circle on a white background"), encode("")


def out(result):
    return tuple(result.args) if hasattr(result, "args") else tuple(result)


def with_family(model, family: str):
    """The model as loaded (eps), patched to v-prediction, or to flow (CONST, shift 3)."""
    from comfy_extras import nodes_model_advanced as adv

    if family == "v":
        return adv.ModelSamplingDiscrete().patch(model, "v_prediction", False)[0]
    if family == "flow":
        return adv.ModelSamplingSD3().patch(model, 3.0)[0]
    return model


def measure(base, pos, neg, family, batch, steps, p=0.93, precision="float64", ddim=False, latent=None,
            patch=True):
    """(state error of the float64/float32 pair; with ``ddim``, the LATENT error of the nodes' round
    trip and DDIM inversion's, else None)."""
    from comfy_extras import nodes_custom_sampler as cs
    from guidance_lab.nodes.bridge.inversion import edict_sample
    from guidance_lab.nodes.ddim_inversion import DDIMInvertNode
    from guidance_lab.nodes.edict import EdictInvertNode, EdictSampleNode, edict_policy
    from guidance_lab.nodes.guider_common import build_guider

    model = with_family(base, family) if patch else base  # the default models come in their family
    sigmas = out(cs.BasicScheduler.execute(model, "normal", steps, 1.0))[0]
    if latent is None:
        latent = {"samples": 4.0 * torch.randn(batch, 4, 6, 10, generator=torch.Generator().manual_seed(0))}
    edict = out(EdictInvertNode.execute(model, pos, neg, CFG, sigmas, p, latent, precision))[0]
    guider = build_guider("tool", model, pos, neg, lambda: edict_policy("tool", CFG, None, model))
    _, pair = edict_sample(guider, edict, edict.schedule)
    start = model.get_model_object("latent_format").process_in(latent["samples"]).double()
    state = max((t.cpu().double() - start).abs().max().item() for t in pair)
    latent_err = ddim_err = None
    if ddim:
        node = out(EdictSampleNode.execute(model, pos, neg, CFG, sigmas, p, edict))[0]["samples"]
        latent_err = (node - latent["samples"]).abs().max().item()
        if family == "flow":  # DDIM Invert refuses sigma 1 on flow models: start one step lower
            sigmas = sigmas[1:]
        noised = out(DDIMInvertNode.execute(model, pos, neg, CFG, sigmas, latent))[0]
        sampler = out(cs.KSamplerSelect.execute("euler"))[0]
        back = out(cs.SamplerCustom.execute(model, False, 0, CFG, pos, neg, sampler, sigmas, noised))[0]
        ddim_err = (back["samples"] - latent["samples"]).abs().max().item()
    return state, latent_err, ddim_err


def default_models_table() -> None:
    """Round trip on the shipped default models: batch 1 and 3, odd and even steps, each model
    inverting images it generated (stock KSampler, CFG 5, 20 steps) under their own prompt."""
    import_pack()
    ensure_host_importable()
    import comfy.utils
    import nodes
    from guidance_lab.default_model import SHIPPED, WEIGHTS_DIR
    from guidance_lab.nodes.bridge.default_model import load_default_model

    comfy.utils.set_progress_bar_enabled(False)
    prompt = "a red circle on a white background"
    print(f"Round trip on the default models at CFG {CFG}, p 0.93, float64 pair, their own images, "
          "max abs error:\n")
    print("| model | family | batch | steps | pair (model space) | LATENT (float32) | DDIM inversion | "
          "DDIM / EDICT pair |")
    print("|---|---|---|---|---|---|---|---|")
    for name in SHIPPED:
        model, clip, vae, meta = load_default_model(WEIGHTS_DIR / name)
        family = meta.get("prediction", "eps")
        encode = nodes.CLIPTextEncode().encode
        pos, neg = encode(clip, prompt)[0], encode(clip, "")[0]
        for batch in (1, 3):
            empty = {"samples": torch.zeros(batch, 3, 32, 32)}
            image = nodes.common_ksampler(model, 7, 20, 5.0, "euler", "normal", pos, neg, empty)[0]
            latent = {"samples": vae.encode(vae.decode(image["samples"]))}
            for steps in (49, 50):
                state, lat, ddim = measure(model, pos, neg, family, batch, steps, ddim=True, latent=latent,
                                           patch=False)
                print(f"| {name} | {family} | {batch} | {steps} | {state:.1e} | {lat:.1e} | {ddim:.1e} | "
                      f"{ddim / max(state, 1e-300):.0e} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=FIXTURE_CACHE / FIXTURE,
                        help="an SD1.5-family checkpoint (default: the test fixture)")
    parser.add_argument("--quick", action="store_true", help="fewer cases (a smoke run)")
    parser.add_argument("--default-models", action="store_true",
                        help="the round-trip table on the pack's trained default models instead")
    args = parser.parse_args()
    if args.default_models:
        default_models_table()
        return 0
    base, pos, neg = setup(args.checkpoint)
    families = ("eps", "v", "flow")
    t0 = time.time()

    print(f"Round trip at CFG {CFG}, p 0.93, float64 pair, latent 4x6x10 (48x80 px), max abs error:\n")
    print("| family | batch | steps | pair (model space) | LATENT (float32) | DDIM inversion | DDIM / EDICT pair |")
    print("|---|---|---|---|---|---|---|")
    cases = [(f, 1, 50) for f in families] if args.quick else \
        [(f, b, n) for f in families for b in (1, 3) for n in (49, 50)]
    for family, batch, steps in cases:
        state, lat, ddim = measure(base, pos, neg, family, batch, steps, ddim=True)
        print(f"| {family} | {batch} | {steps} | {state:.1e} | {lat:.1e} | {ddim:.1e} | {ddim / state:.0e} |",
              flush=True)

    print("\nGrowth with the number of steps (batch 1, p 0.93), pair error, float64 / float32 state:\n")
    step_counts = (10, 50) if args.quick else (10, 25, 50, 100, 200)
    print("| family | " + " | ".join(f"{n} steps" for n in step_counts) + " |")
    print("|---|" + "---|" * len(step_counts))
    for family in families:
        cells = []
        for n in step_counts:
            f64 = measure(base, pos, neg, family, 1, n)[0]
            f32 = measure(base, pos, neg, family, 1, n, precision="float32")[0]
            cells.append(f"{f64:.0e} / {f32:.0e}")
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)

    print("\nGrowth as p falls (batch 1, 50 steps), pair error, float64 / float32 state:\n")
    weights = (0.8, 0.93) if args.quick else (0.7, 0.8, 0.9, 0.93, 0.97)
    print("| family | " + " | ".join(f"p {p}" for p in weights) + " |")
    print("|---|" + "---|" * len(weights))
    for family in families:
        cells = []
        for p in weights:
            f64 = measure(base, pos, neg, family, 1, 50, p=p)[0]
            f32 = measure(base, pos, neg, family, 1, 50, p=p, precision="float32")[0]
            cells.append(f"{f64:.0e} / {f32:.0e}")
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
