"""Train AGD adapters (Jensen & Sadat, TMLR 2025) for a frozen model: data, training, the file.

    # 1. CFG trajectories of the frozen model (w ~ U[lo, hi] per trajectory, empty negative)
    .host/venv/bin/python -m tools.training.agd generate --data ~/agd/vpred32 --prompts 512 \\
        --steps 20 --scale-range 1 8
    # 2. adapters fit to the CFG outputs; one process, or unchanged on several:
    .host/venv/bin/python -m tools.training.agd train --data ~/agd/vpred32 --run-name agd_vpred32 \\
        --steps 2000 --out default_model/weights/agd_vpred32.safetensors
    .host/venv/bin/torchrun --standalone --nproc_per_node 2 -m tools.training.agd train ...  # DDP

Trajectories (``nodes/bridge/agd_training.py``) are sampled by ComfyUI and stored as numpy
memory maps (``guiders/agd/trajectories.py``), so a data set can exceed memory; a killed
``generate`` resumes at its next chunk. Training (``guiders/agd/training.py``): MSE between
the adapted model's one-pass output and the stored CFG output, AdamW (no weight decay),
linear warm-up (10 %) then cosine decay to 0. Batch ``k`` is a function of (``--seed``, ``k``)
alone and is split evenly over the processes, so N processes under torchrun (DDP, gradients
averaged; gloo on CPU, nccl on GPU) train the same adapters as one process with the same
global batch, and a resumed run continues exactly where it was. Checkpoints (adapters,
optimizer, step, settings) are written atomically every ``--checkpoint-every`` steps to
``~/.cache/guidance-lab/training/<run-name>/agd_checkpoint.safetensors``; rerunning the command
resumes from the last one (refused if the settings differ); the loss log is
``agd_loss.jsonl`` beside it. ``--out`` writes the adapter file: safetensors with the base
model's fingerprint, architecture, scale range, adapter and training settings, parameter
count and this command in its metadata.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from tools.bootstrap import pack_with_host
from tools.paths import TRAINING_CACHE

# Test hook: exit abruptly (as a kill would) right after this step, before it is saved.
CRASH_AFTER_ENV = "GUIDANCE_LAB_AGD_CRASH_AFTER"
DEFAULT_DATA_SEED = 20261123  # the default model's training data (tools/training/train.py)
VPRED32_FILE = "guidance_lab_vpred32.safetensors"  # the eps-family default model (v, zero terminal SNR)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write CFG trajectories of the frozen model")
    g.add_argument("--data", type=Path, required=True, help="folder for the memory-mapped trajectories")
    g.add_argument("--model", type=Path, default=None, help="model file (default: the pack's default model)")
    g.add_argument("--prompts", default="256",
                   help="a number N (the default model's first N distinct training prompts) or a text file, "
                        "one prompt per line")
    g.add_argument("--per-prompt", type=int, default=1, help="trajectories per prompt")
    g.add_argument("--steps", type=int, default=20, help="sampling steps per trajectory")
    g.add_argument("--scale-range", type=float, nargs=2, default=(1.0, 8.0), metavar=("LO", "HI"))
    g.add_argument("--sampler", default="euler", help="ComfyUI sampler (one model evaluation per step)")
    g.add_argument("--scheduler", default="normal")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chunk", type=int, default=16, help="trajectories sampled together")
    g.add_argument("--latent-size", type=int, default=32, help="latent height and width (the default model: 32)")
    g.add_argument("--threads", type=int, default=2)

    t = sub.add_parser("train", help="train adapters on generated trajectories")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--model", type=Path, default=None, help="the model the data was generated with")
    t.add_argument("--run-name", default="agd")
    t.add_argument("--run-dir", type=Path, default=None, help="checkpoint folder (default: the training cache)")
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--batch-size", type=int, default=64, help="global batch (all processes together)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--warmup-frac", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0, help="draws the batches")
    t.add_argument("--loss-space", choices=["denoised", "noise"], default="denoised",
                   help="denoised: MSE of ComfyUI's denoised estimates; noise: of the noise estimates "
                        "(x - D) / sigma, the paper's eps-MSE (the denoised error weighted by 1 / sigma^2)")
    t.add_argument("--width", type=int, default=32, help="adapter width (the reference uses 320 for SD)")
    t.add_argument("--fourier-features", type=int, default=32)
    t.add_argument("--mlp-hidden", type=int, default=64, help="hidden width of the w MLP (reference: 1280)")
    t.add_argument("--time-features", type=int, default=32)
    t.add_argument("--adapter-seed", type=int, default=0, help="draws f, phi and the initial weights")
    t.add_argument("--adapter-kind", choices=["block_attention", "offset"], default="block_attention",
                   help="transformers: block_attention (a cross-attention adapter reading each token the block "
                        "returns; the default) or offset (one token-independent offset per block, the "
                        "reference's). UNets: cross-attention adapters always (not used)")
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", type=Path, default=None, help="write the adapter file here when done")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="AGD against CFG: RMSE before/after training, NFE and wall time")
    e.add_argument("--adapter", type=Path, required=True)
    e.add_argument("--model", type=Path, default=None)
    e.add_argument("--prompts", default="16", help="as for generate")
    e.add_argument("--scales", type=float, nargs="+", default=None, help="default: 1/3 and 2/3 into the range")
    e.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--latent-size", type=int, default=32)
    e.add_argument("--trajectories", type=Path, default=None,
                   help="also the per-step RMSE to CFG on the teacher's own states of these trajectories "
                        "(a `generate` folder made with another --seed than the training data's)")
    e.add_argument("--teacher-steps", type=int, nargs="+", default=[],
                   help="diagnosis: also the RMSE when AGD starts from CFG's own state after each of these "
                        "numbers of steps (what a perfect fix of the first steps could give at most)")
    e.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def load_model(path):
    """(MODEL, CLIP) of a default-model file (the pack's loader) or any ComfyUI checkpoint."""
    pack_with_host()
    from guidance_lab.default_model import DEFAULT_WEIGHTS, WEIGHTS_DIR
    from guidance_lab.nodes.bridge import default_model as dm
    from guidance_lab.nodes.bridge.files import read_format

    if not path:  # the pack's default model; the v1 file while the v2 weights are not in the checkout
        candidates = [WEIGHTS_DIR / DEFAULT_WEIGHTS, WEIGHTS_DIR / VPRED32_FILE]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    path = Path(path)
    if read_format(path) == dm.FORMAT:
        model, clip, _vae, _meta = dm.load_default_model(path)
        return model, clip
    import comfy.sd

    return tuple(comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)[:2])


def default_prompts(count: int) -> list:
    """The default model's first ``count`` distinct training prompts."""
    from tools.training.dataset import prompt_for, sample_scene

    seen, index = [], 0
    while len(seen) < count and index < 100 * count:
        text = prompt_for(sample_scene(DEFAULT_DATA_SEED, index))
        if text not in seen:
            seen.append(text)
        index += 1
    return seen


def read_prompts(spec: str) -> list:
    if spec.isdigit():
        return default_prompts(int(spec))
    return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]


class Distributed:
    """torchrun's environment (rank, world size, device) for ``fit``; DDP wraps the student."""

    def __init__(self):
        import torch
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
        if self.world > 1:
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if cuda else "gloo")

    def wrap(self, module):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module) if self.world > 1 else module

    def barrier(self):
        import torch.distributed as dist

        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def close(self):
        import torch.distributed as dist

        if self.world > 1:
            dist.destroy_process_group()


def train(args, log=print):
    """Train (or resume training) adapters; writes the adapter file with ``--out``. Returns the adapters."""
    import torch

    pack_with_host()
    from guidance_lab.guiders.agd import AdapterConfig, adapter_file
    from guidance_lab.guiders.agd.trajectories import TrajectoryStore
    from guidance_lab.nodes.bridge.agd import architecture_of, base_parameter_count
    from guidance_lab.nodes.bridge.agd_training import fit
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    torch.set_num_threads(args.threads)
    store = TrajectoryStore.open(args.data)
    if not store.meta.get("complete"):
        raise SystemExit(f"the trajectories in {args.data} are incomplete: rerun `generate` to finish them")
    dist = Distributed()
    if args.batch_size % dist.world:
        raise SystemExit(f"--batch-size {args.batch_size} must divide evenly over {dist.world} processes")
    model, _clip = load_model(args.model)
    config = AdapterConfig(width=args.width, fourier_features=args.fourier_features, mlp_hidden=args.mlp_hidden,
                           time_features=args.time_features, seed=args.adapter_seed)
    bar = None
    if dist.main and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="AGD", file=sys.stderr)

    def on_step(step, steps, loss):
        if bar is not None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4g}")

    try:
        adapters, losses = fit(model, store, config, args.run_dir or TRAINING_CACHE / args.run_name, args.steps,
                               args.batch_size, args.lr, args.warmup_frac, args.seed, args.loss_space,
                               args.checkpoint_every, dist, on_step, int(os.environ.get(CRASH_AFTER_ENV, "-1")), log,
                               kind=args.adapter_kind)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if bar is not None:
        bar.close()
    if dist.main and args.out:
        base = base_parameter_count(model)
        training = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("command", "out", "quiet", "threads", "run_dir")}
        training.update(final_loss=losses[-1] if losses else None, processes=dist.world,
                        trajectories={k: v for k, v in store.meta.items() if k != "prompts"})
        made = adapter_file.AdapterFile(adapters, base_model_fingerprint(model), architecture_of(model),
                                        tuple(store.meta["scale_range"]), training,
                                        "python -m tools.training.agd " + shlex.join(sys.argv[1:]), base)
        adapter_file.save(args.out, made)
        log(f"wrote {args.out}: {adapters.parameter_count()} parameters "
            f"({100 * adapters.parameter_count() / base:.1f}% of the model)")
    dist.close()
    return adapters


def generate_command(args) -> None:
    import torch

    pack_with_host()
    from guidance_lab.nodes.bridge.agd_training import generate
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    torch.set_num_threads(args.threads)
    model, clip = load_model(args.model)
    channels = model.get_model_object("latent_format").latent_channels
    try:
        generate(model, clip, args.data, read_prompts(args.prompts), args.scale_range, args.steps, args.seed,
                 chunk=args.chunk, per_prompt=args.per_prompt, sampler_name=args.sampler, scheduler=args.scheduler,
                 latent_shape=(channels, args.latent_size, args.latent_size), fingerprint=base_model_fingerprint(model),
                 progress=lambda done, total: print(f"trajectories {done}/{total}", file=sys.stderr, flush=True))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {args.data}")


def evaluate_command(args) -> dict:
    """Per scale: the RMSE of AGD's sampled latents to CFG's (same prompts and seeds) with the
    untrained (zero) and the trained adapters, and the wall time of each method's sampling."""
    import json

    import torch

    pack_with_host()
    from guidance_lab.guiders.agd import AdapterSet, adapter_file
    from guidance_lab.nodes.bridge.agd import adapter_layout
    from guidance_lab.guiders.agd.trajectories import TrajectoryStore
    from guidance_lab.nodes.bridge.agd_training import encode_prompts, teacher_forced_rmse

    torch.set_num_threads(args.threads)
    model, clip = load_model(args.model)
    try:
        made = adapter_file.load(args.adapter)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    lo, hi = made.scale_range
    scales = args.scales or [lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3]
    try:
        (positive, positive_options, lengths), (negative, negative_options, _) = (
            encode_prompts(clip, prompts, True) for prompts in (read_prompts(args.prompts), [""]))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if len(set(lengths)) > 1:
        raise SystemExit(f"the prompts encode to different lengths ({min(lengths)} to {max(lengths)} tokens); "
                         "evaluate prompts of one length")
    shape = (model.get_model_object("latent_format").latent_channels, args.latent_size, args.latent_size)
    try:
        kind, layout = adapter_layout(model, made.adapters.kind)
    except ValueError as err:
        raise SystemExit(f"{args.adapter}: {err}") from None
    untrained = AdapterSet(layout, made.adapters.config, kind)
    try:
        rows = [evaluate_scale(args, model, (positive, positive_options), (negative, negative_options), untrained,
                               made, scale, shape) for scale in scales]
    except ValueError as err:  # an adapter or data set of another model, named by the bridge
        raise SystemExit(str(err)) from None
    report = {"adapter": str(args.adapter), "parameters": made.adapters.parameter_count(),
              "percent_of_model": 100 * made.adapters.parameter_count() / max(made.base_parameter_count, 1),
              "prompts": int(positive.shape[0]), "seeds": args.seeds, "steps": args.steps, "rows": rows}
    if args.trajectories:
        store = TrajectoryStore.open(args.trajectories)
        try:
            zero, trained = (teacher_forced_rmse(model, store, a) for a in (untrained, made.adapters))
        except ValueError as err:
            raise SystemExit(str(err)) from None
        report["teacher_forced"] = {"trajectories": str(args.trajectories), "rmse_untrained": zero,
                                    "rmse_trained": trained, "cut": [z / max(t, 1e-12) for z, t in zip(zero, trained)]}
    print(json.dumps(report, indent=1))
    return report


def evaluate_scale(args, model, positive: tuple, negative: tuple, untrained, made, scale: float, shape) -> dict:
    """``evaluate``'s row for one scale: RMSE to CFG untrained and trained, the side-by-side
    sampling times and, with ``--teacher-steps``, the oracle RMSEs. ``positive``, ``negative``:
    (embeddings, conditioning options)."""
    import time

    from guidance_lab.nodes.bridge.agd_training import sampled_rmse

    def rmse(adapters, **options):
        return sampled_rmse(model, positive[0], negative[0], adapters, made.scale_range, scale, args.seeds,
                            args.steps, latent_shape=shape, fingerprint=made.base_fingerprint,
                            positive_options=positive[1], negative_options=negative[1], **options)

    before = rmse(untrained)
    started = time.perf_counter()
    after, timing = rmse(made.adapters, timing=True)
    row = {"scale": scale, "rmse_untrained": before, "rmse_trained": after, "cut": before / max(after, 1e-12),
           "seconds_cfg": timing["cfg"], "seconds_agd": timing["agd"], "wall_ratio": timing["agd"] / timing["cfg"],
           "nfe_per_step_cfg": 2, "nfe_per_step_agd": 1, "seconds_total": time.perf_counter() - started}
    if args.teacher_steps:
        oracle = {k: rmse(made.adapters, teacher_steps=k) for k in args.teacher_steps}
        row.update(rmse_after_teacher_steps=oracle,
                   cut_after_teacher_steps={k: before / max(v, 1e-12) for k, v in oracle.items()})
    return row


def main(argv=None):
    args = parse_args(argv)
    {"generate": generate_command, "train": train, "evaluate": evaluate_command}[args.command](args)


if __name__ == "__main__":
    main()
