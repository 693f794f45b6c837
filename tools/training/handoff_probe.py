"""Where along the schedule does a student default model lose shape? Hand one sampling run
from one model to another at a chosen step and score the images.

    .host/venv/bin/python -m tools.training.handoff_probe --student /tmp/dit.safetensors \
        --teacher guidance_lab_flow32.safetensors --switch 5 10 15

For every switch step k, two runs per prompt through the stock KSamplerAdvanced (euler,
normal schedule, CFG --cfg, each model with its own text encoder): teacher for steps [0, k)
then student for [k, steps) ("T>S"), and the reverse ("S>T"). If T>S at k scores like the
teacher, the student's low-noise refinement is sound and its loss of shape lies above step k's
noise level; if S>T scores like the student, its layout at high noise is already wrong. Both
models must share the sigma schedule (checked). Prompts, loading and scoring are evaluate.py's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tools.bootstrap import pack_with_host


def handoff(first, second, k, latent, args):
    """Steps [0, k) on ``first`` (model, positive, negative), [k, steps) on ``second``."""
    import nodes

    ks = nodes.KSamplerAdvanced().sample
    if k > 0:
        (latent,) = ks(first[0], "enable", args.seed, args.steps, args.cfg, "euler", "normal", first[1], first[2],
                       latent, 0, k, "enable")
    if k < args.steps:
        (latent,) = ks(second[0], "enable" if k == 0 else "disable", args.seed, args.steps, args.cfg, "euler",
                       "normal", second[1], second[2], latent, k, args.steps, "disable")
    return latent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", default="guidance_lab_flow32.safetensors")
    p.add_argument("--switch", type=int, nargs="+", default=[5, 10, 15])
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=424242)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baselines", action="store_true", help="also score each model alone (evaluate.py's CFG row)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    pack_with_host()
    import torch

    import comfy.samplers
    import nodes
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage
    from tools.quality.shapes import label_accuracy
    from tools.training.dataset import vocabulary_prompts
    from tools.training.evaluate import batched_conditioning, load_weights

    torch.set_num_threads(args.threads)
    prompts = vocabulary_prompts()
    (tm, tc, vae), (sm, sc, _v) = load_weights(args.teacher), load_weights(args.student)
    sigmas = [comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "normal", args.steps)
              for m in (tm, sm)]
    if not torch.allclose(sigmas[0], sigmas[1]):
        raise SystemExit(f"the two models' schedules differ: {sigmas[0]} vs {sigmas[1]}")
    teacher, student = (tm, *batched_conditioning(tc, prompts)), (sm, *batched_conditioning(sc, prompts))
    latent = EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=len(prompts)).args[0]
    rows = {}
    alone = [("teacher", teacher, teacher, 0), ("student", student, student, 0)] if args.baselines else []
    for name, first, second, k in (alone + [(f"T>S@{k}", teacher, student, k) for k in args.switch]
                                   + [(f"S>T@{k}", student, teacher, k) for k in args.switch]):
        images = nodes.VAEDecode().decode(vae, handoff(first, second, k, latent, args))[0]
        rows[name] = {"sigma_at_switch": round(float(sigmas[0][k]), 3), **label_accuracy(images, prompts)}
        print(json.dumps({name: rows[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
