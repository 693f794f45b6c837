"""The demo: start ComfyUI with the pack, run the CFG-guider workflow over the HTTP API,
and write the image(s) and the run's NFE report to demo_output/.

Run with the host's python (``make demo`` provisions it first). Until the pack ships its
own trained model, the demo runs on the tiny SD1.5-family checkpoint the tests build
(random weights, so the image is noise: this shows the plumbing, not image quality).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def import_pack():
    sys.path.insert(0, str(REPO / "host"))
    from pack_import import import_pack as load_pack

    return load_pack()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default="cfg_guider", help="a workflow in workflows/api/ (no .json)")
    parser.add_argument("--prompt", default="a red circle on a white background")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128, help="image width and height in pixels")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    args = parser.parse_args(argv)

    import_pack()
    from guidance_lab.host.api_graph import API_WORKFLOWS, load, nodes_of, retarget
    from guidance_lab.host.comfy_server import ComfyServer, execution_error, history_status
    from guidance_lab.tests.paths import FIXTURE_CACHE, ensure_host_importable

    ensure_host_importable()
    builder = importlib.import_module("guidance_lab.tests.fixtures.sd15_checkpoint")
    print("[demo] building/finding the demo checkpoint ...", flush=True)
    checkpoint = builder.ensure_sd15_checkpoint(FIXTURE_CACHE)

    graph = retarget(load(API_WORKFLOWS / f"{args.workflow}.json"), ckpt_name=checkpoint.name,
                     size=args.size, steps=args.steps)
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "CLIPTextEncode" and inputs.get("text"):
            inputs["text"] = args.prompt
        if node["class_type"].endswith("CFGGuider"):
            inputs["cfg"] = args.cfg
        if node["class_type"] == "RandomNoise":
            inputs["noise_seed"] = args.seed

    args.out.mkdir(parents=True, exist_ok=True)
    server_dir = args.out / "server"
    shutil.rmtree(server_dir, ignore_errors=True)
    print("[demo] starting ComfyUI with the pack ...", flush=True)
    with ComfyServer(server_dir, extra_model_paths={"checkpoints": str(checkpoint.parent)}) as server:
        print(f"[demo] ComfyUI ready at {server.url('/')} in {server.start_seconds:.1f} s; "
              f"queueing workflows/api/{args.workflow}.json", flush=True)
        t0 = time.monotonic()
        entry = server.run_prompt(graph, timeout=1800)
        status, _ = history_status(entry)
        if status != "success":
            print(f"[demo] the workflow failed: {execution_error(entry)}", file=sys.stderr)
            return 1
        images = server.output_images(entry)
        saved = []
        for image in images:
            target = args.out / image.name
            shutil.copyfile(image, target)
            saved.append(target)
        for node_id in nodes_of(graph, "GuidanceLab_GuidedSampler"):
            report = "".join(entry["outputs"].get(node_id, {}).get("text", []))
            (args.out / "report.txt").write_text(report + "\n")
            print("[demo] report:\n  " + report.replace("\n", "\n  "))
    print(f"[demo] done in {time.monotonic() - t0:.1f} s; images: " + ", ".join(str(p) for p in saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
