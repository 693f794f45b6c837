"""The demo: start ComfyUI with the pack, run the default model's workflow over the HTTP API
for a few prompts, and write the images, a labelled grid and their measured adherence to
demo_output/.

Runs ``workflows/api/default_model.json`` (the pack's Default Model Loader, stock
CLIPTextEncode, KSampler at CFG 5 and VAEDecode) once per prompt; the prompts are
held-out dataset prompts unless given with --prompt. Run with the host's python
(``make demo`` provisions it first).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tools.bootstrap import import_pack
from tools.paths import REPO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", action="append", default=None,
                        help="a prompt like 'a red circle on a white background' (repeatable)")
    parser.add_argument("--count", type=int, default=8, help="held-out prompts when no --prompt is given")
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt")
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    parser.add_argument("--weights", default=None,
                        help="default-model file in default_model/weights/ (default: DEFAULT_WEIGHTS, "
                             "the model the pack presents first)")
    args = parser.parse_args(argv)

    import_pack()
    from guidance_lab.default_model import DEFAULT_WEIGHTS

    args.weights = args.weights or DEFAULT_WEIGHTS
    from tools.training.dataset import make_batch
    from tools.image_grid import image_grid
    from tools.host.api_graph import API_WORKFLOWS, load
    from tools.host.comfy_server import ComfyServer, execution_error, history_status

    prompts = args.prompt or make_batch(777, 0, args.count, 32)[1]
    template = load(API_WORKFLOWS / "default_model.json")

    def graph_for(index: int, prompt: str) -> dict:
        graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in template.items()}
        graph["1"]["inputs"]["weights"] = args.weights
        graph["2"]["inputs"]["text"] = prompt
        graph["4"]["inputs"]["batch_size"] = args.seeds
        graph["5"]["inputs"].update(seed=args.seed + index, cfg=args.cfg, steps=args.steps)
        graph["7"]["inputs"]["filename_prefix"] = f"demo/{index:02d}"
        return graph

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    print("[demo] starting ComfyUI with the pack ...", flush=True)
    t0 = time.monotonic()
    rows = []
    with ComfyServer(args.out / "server") as server:
        print(f"[demo] ComfyUI ready at {server.url('/')} in {server.start_seconds:.1f} s; queueing "
              f"workflows/api/default_model.json with {args.weights} for {len(prompts)} prompts x "
              f"{args.seeds} seeds", flush=True)
        for index, prompt in enumerate(prompts):
            entry = server.run_prompt(graph_for(index, prompt), timeout=900)
            status, _ = history_status(entry)
            if status != "success":
                print(f"[demo] the workflow failed: {execution_error(entry)}", file=sys.stderr)
                return 1
            saved = []
            for k, image in enumerate(server.output_images(entry)):
                target = args.out / f"{index:02d}_{k}_{prompt.replace(' ', '_')}.png"
                shutil.copyfile(image, target)
                saved.append(target)
            rows.append((prompt, saved))
            print(f"[demo] {prompt}: {len(saved)} images", flush=True)

    import numpy as np

    from tools.image_grid import load_images
    from tools.quality.shapes import label_accuracy

    tiles = [list(load_images(saved)) for _, saved in rows]
    grid = image_grid(args.out / "grid.png", tiles, [p for p, _ in rows],
                      [f"seed {args.seed}+{k}" for k in range(args.seeds)])
    flat = np.concatenate([np.stack(t) for t in tiles])
    scores = label_accuracy(flat, [p for p, saved in rows for _ in saved])
    report = (f"{args.weights}: {len(flat)} images, CFG {args.cfg:g}, {args.steps} steps: adherence (shape and colour "
              f"match, tools/quality/shapes.py) {scores['adherence']:.3f}; shape {scores['shape']:.3f}, colour "
              f"{scores['colour']:.3f}, background {scores['background']:.3f}")
    (args.out / "report.txt").write_text(report + "\n")
    print(f"[demo] {report}")
    print(f"[demo] done in {time.monotonic() - t0:.1f} s; grid: {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
