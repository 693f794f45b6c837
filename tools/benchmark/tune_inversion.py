"""Sweep the inversion section's settings (inversion CFG, edit CFG, strength, the edit's
negative, EDICT's mixing weight p, steps, the inversion's prompt, the scheduler, the edit's
guidance: CFG or APG) on source/edit pairs the benchmark never scores, and print how often
each edit lands and the rest is kept, part by part.

    .host/venv/bin/python -m tools.benchmark.tune_inversion --weights guidance_lab_flow32.safetensors \
        --settings 3,3,0.8 3,5,1.0 3,7,0.9 3,8,1.0,empty,0.8 3,8,1.0,empty,0.86,30 1,8,1.0,empty,0.8,0,empty \
        3,8,1.0,empty,0.8,0,source,beta 3,12,1.0,empty,0.8,0,source,normal,apg,0,5

The pairs come from dataset seed ``TUNING_SEED`` (the benchmark scores --eval-seed + 3); the
fixed red-to-blue circle, which every pair list starts with, is left out. The chosen values
go into inversion.py's TUNED (per model) or its constants (every other model) by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tools.bootstrap import import_pack
from tools.paths import run_workdir

import_pack()
from guidance_lab.default_model import DEFAULT_WEIGHTS  # noqa: E402

TUNING_SEED = 4242


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=DEFAULT_WEIGHTS)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--settings", nargs="+", default=["3,3,0.8", "3,5,1.0"],
                   help="inversion_cfg,edit_cfg,strength[,edit_negative[,mixing_weight[,steps[,inversion_prompt"
                        "[,scheduler[,edit_guidance[,apg_eta[,apg_norm_threshold[,gamma]]]]]]]]]] (edit_negative and "
                        "inversion_prompt: empty or source; steps: of the inversion and re-sampling, 0 for --steps; "
                        "scheduler: ComfyUI's, default normal; edit_guidance: cfg or apg, momentum 0; gamma: BDIA's)")
    p.add_argument("--methods", nargs="+", default=["edict", "ddim"], choices=["edict", "bdia", "o_belm", "ddim"])
    p.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tools.benchmark import inversion as inv
    from tools.benchmark.guidance_benchmark import Runner
    from tools.bootstrap import ensure_host_importable
    from tools.host.comfy_server import ComfyServer
    from tools.image_grid import load_images

    ensure_host_importable()
    pairs = inv.edit_pairs(args.pairs + 1, TUNING_SEED)[1:]
    workdir = run_workdir("tune-inversion")
    shutil.rmtree(workdir, ignore_errors=True)
    table = []
    with ComfyServer(workdir) as server:
        runner = Runner(server, argparse.Namespace(weights=args.weights, steps=args.steps, seeds=1))

        def image(graph):
            return load_images(server.output_images(runner.run(graph)))[0]

        sources = [image(inv.source_graph(pair, args.steps, args.weights)) for pair in pairs]
        for setting in args.settings:
            settings = inv.EditSettings.parse(setting)
            for method in args.methods:
                judged = [inv.judge(pair, source,
                                    image(inv.edit_graph(pair, args.steps, args.weights, method, settings=settings)))
                          for pair, source in zip(pairs, sources)]
                row = {"setting": setting, "method": method,
                       **{k: sum(j[k] for j in judged) / len(judged) for k in ("landed", "kept", "both")},
                       **{f"landed_{kind}": sum(j["landed"] for p, j in zip(pairs, judged) if p.changes == kind)
                          / max(1, sum(p.changes == kind for p in pairs)) for kind in ("colour", "shape")}}
                kept = inv.kept_parts(judged)
                row["kept_parts"], row["moved_median"] = kept["parts"], kept["moved_median"]
                table.append(row)
                print(f"[tune] {setting:12s} {method:5s} lands {row['landed']:.0%} (colour "
                      f"{row['landed_colour']:.0%}, shape {row['landed_shape']:.0%}), kept {row['kept']:.0%}, "
                      f"both {row['both']:.0%}; kept " + ", ".join(f"{k} {v:.0%}" for k, v in row["kept_parts"].items())
                      + f", median move {row['moved_median']:.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"weights": args.weights, "tuning_seed": TUNING_SEED,
                                        "pairs": len(pairs), "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
