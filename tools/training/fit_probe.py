"""How fast a fresh default-model network fits one fixed batch: a cheap A/B of architecture settings.

    .host/venv/bin/python -m tools.training.fit_probe --rope-theta 100 --steps 900 -- \
        --architecture flux --prediction flow

Trains on a single batch of the dataset (fixed images and captions, fresh noise each step, noise
levels in the middle band where shape is decided) and prints the loss on that batch at three
fixed noise levels and a held-out noise draw. Lower sooner means the network can represent the
batch's detail (corners, thin arms) more easily; it says nothing of generalisation. Arguments
after ``--`` go to the trainer's parser (``tools.training.train``).
"""

from __future__ import annotations

import argparse
import json
import time

from tools.bootstrap import pack_with_host

LEVELS = (0.3, 0.5, 0.7)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--every", type=int, default=150, help="evaluate every N steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rope-theta", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("trainer_args", nargs="*", help="trainer arguments (after --)")
    args = p.parse_args(argv)
    pack_with_host()
    import torch

    from tools.training import train as T

    torch.set_num_threads(args.threads)
    targs = T.parse_args([*args.trainer_args, "--lr", "1e-3", "--warmup", "20", "--steps", str(args.steps),
                          "--seed", str(args.seed), "--p-uncond", "0", "--batch-size", str(args.batch_size),
                          "--rope-theta", str(args.rope_theta)])
    trainer = T.Trainer(targs)
    x0, prompts, _u, _noise = T.training_batch(targs, 123)
    n = x0.shape[0]

    def fixed_batch(step):
        u = 0.3 + 0.4 * torch.rand(n, generator=torch.Generator().manual_seed(step))
        return x0, prompts, u, torch.randn(x0.shape, generator=torch.Generator().manual_seed(10_000 + step))

    trainer.batch = fixed_batch
    held_out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(99))
    flux = targs.architecture == "flux"

    def losses():
        out = []
        with torch.no_grad():
            context, pooled = trainer.text.clip_l([trainer.tokens(q) for q in prompts])
            for level in LEVELS:
                xt, ts, target, _a, _s = T.noised_inputs(targs.prediction, trainer.acp, x0,
                                                         torch.full((n,), level), held_out)
                if flux:
                    pred = trainer.unet(xt, ts * (T.timestep_multiplier(targs) / 1000.0), context, y=pooled)
                else:
                    pred = trainer.unet(xt, timesteps=ts, context=context)
                out.append(round(float(torch.nn.functional.mse_loss(pred.float(), target)), 5))
        return out

    start = time.time()
    for step in range(1, args.steps + 1):
        trainer.train_step()
        if step % args.every == 0:
            print(json.dumps({"rope_theta": args.rope_theta, "seed": args.seed, "step": step,
                              "loss_at": dict(zip(map(str, LEVELS), losses())),
                              "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
