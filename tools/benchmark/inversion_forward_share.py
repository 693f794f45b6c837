"""How much of each inversion round trip is the network (issue 33's EDICT probe).

Builds full_size.py's SD1.5-size UNet (random weights), runs DDIM inversion + sampling, EDICT
and BDIA round trips (full_size.py's variants, 2 steps) twice each after a warm-up, and times
the diffusion model's forwards with hooks: per path the total, the forwards, the network's
time per forward and what is left outside it. Run alone on the machine:

    OMP_NUM_THREADS=1 .host/venv/bin/python -m tools.benchmark.inversion_forward_share
"""

from __future__ import annotations

import time

from tools.bootstrap import ensure_host_importable, import_pack

PATHS = ("ddim", "edict", "bdia")


def main() -> int:
    ensure_host_importable()
    import_pack()
    from tools.benchmark import full_size as fs

    cfg = fs.config_for("cpu")
    net = next(n for n in cfg.nets if n.name == "sd15")
    model, diffusion, _ = fs.build_net(net, cfg)
    ctx = fs.run_context(net, model, 1, net.latent)
    variants = {v.name: v for v in fs.variants_for(net, ctx, cfg)[0] if v.name in PATHS}
    clock = {"network": 0.0, "start": 0.0, "forwards": 0}

    def before(module, args):
        clock["start"] = time.perf_counter()
        clock["forwards"] += 1

    def after(module, args, output):
        clock["network"] += time.perf_counter() - clock["start"]

    diffusion.register_forward_pre_hook(before)
    diffusion.register_forward_hook(after)
    for variant in variants.values():  # first-use costs (the fingerprint hash) stay out
        variant.run(998)
    for r in range(2):
        for name in PATHS if r == 0 else PATHS[::-1]:
            clock.update(network=0.0, forwards=0)
            start = time.perf_counter()
            with variants[name].context():
                variants[name].run(1000 + r)
            total = time.perf_counter() - start
            n = max(clock["forwards"], 1)
            print(f"{name}: {total:.2f} s, {clock['forwards']} forwards, network {clock['network']:.2f} s "
                  f"({clock['network'] / n:.2f} s each), outside it {total - clock['network']:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
