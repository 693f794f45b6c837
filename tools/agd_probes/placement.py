"""Probe: do adapters at the decoder's 16x16 / 32x32 stages imitate CFG's middle steps where the
attn2 adapters (8x8 only) do not? Mode ``full`` trains every base weight too (lr 1e-4 against the
adapters' 1e-3): what any one-pass student of the network recovers at this budget. Same data,
budget and loss; teacher-forced on held-out states and sampled (Euler, same noise) against CFG.

    PYTHONPATH=. OMP_NUM_THREADS=1 .host/venv/bin/python tools/agd_probes/placement.py {attn2|hires|full} \
        vpred32 TRAIN HELD 1500 32 OUT.json
TRAIN: `python -m tools.training.agd generate --data TRAIN
--model default_model/weights/guidance_lab_vpred32.safetensors --prompts 144 --per-prompt 2 --steps 20
--scale-range 1 8`; HELD: the same with --prompts 48 --seed 1."""
import copy, json, os, sys, time, torch, numpy as np
from tools.training import agd as T
T.pack_with_host()
from guidance_lab.default_model import WEIGHTS_DIR
from guidance_lab.guiders.agd import AdapterConfig, AdapterSet
from guidance_lab.guiders.agd.adapter import CrossAttentionAdapter
from guidance_lab.guiders.agd.policy import RUN_KEY
from guidance_lab.guiders.agd.training import batch_indices, lr_at
from guidance_lab.guiders.agd.trajectories import TrajectoryStore
from guidance_lab.nodes.bridge.agd import AGDAdapters, attn2_layout, run_options
from guidance_lab.nodes.bridge.agd_training import encode_prompts
mode, name, train_dir, held_dir, steps, batch, out = sys.argv[1:8]
steps, batch = int(steps), int(batch)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
torch.manual_seed(0)
model, clip = T.load_model(WEIGHTS_DIR / f"guidance_lab_{name}.safetensors")
model.model.requires_grad_(False)
dm = model.model.diffusion_model
ms = model.get_model_object("model_sampling")
cfg = AdapterConfig(width=64, fourier_features=32, mlp_hidden=64, time_features=32)
attn = AdapterSet(attn2_layout(model), cfg)
agd = AGDAdapters(attn, (1, 8), "")
# channel widths entering output blocks 2..5 (h before the skip concat)
probe = {}
def rec(h, hsp, to):
    probe[to["block"][1]] = h.shape
    return h, hsp
with torch.no_grad():
    x0 = torch.zeros(1, 3, 32, 32)
    model.model.apply_model(x0, torch.tensor([1.0]), c_crossattn=torch.zeros(1, 77, 64),
                            transformer_options={"patches": {"output_block_patch": [rec]}})
print({k: tuple(v) for k, v in probe.items()})
hires_ids = [i for i, s in probe.items() if s[-1] >= 16] if mode == "hires" else []
gen = torch.Generator().manual_seed(1)
hires = torch.nn.ModuleDict({str(i): CrossAttentionAdapter(probe[i][1], 64, cfg, gen) for i in hires_ids})
params = list(attn.parameters()) + list(hires.parameters())
print(mode, "hires blocks", hires_ids, "params", sum(p.numel() for p in params))
ctx_box = {}
def hires_patch(h, hsp, to):
    key = str(to["block"][1])
    if key not in hires or RUN_KEY not in to:
        return h, hsp
    n, c, H, W = h.shape
    t = ms.timestep(to["sigmas"]).float()
    flat = h.permute(0, 2, 3, 1).reshape(n, H * W, c)
    d = hires[key](flat, ctx_box["scale"], t, ctx_box["context"])
    return h + d.reshape(n, H, W, c).permute(0, 3, 1, 2), hsp
def student(x, sigma, context, scale):
    ctx_box["scale"], ctx_box["context"] = scale, context
    opts = {"patches": {"attn2_patch": [agd.input_patch], "attn2_output_patch": [agd.output_patch],
                        "output_block_patch": [hires_patch]},
            "sigmas": sigma, RUN_KEY: run_options(scale, model)}
    return model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=opts)
train, held = TrajectoryStore.open(train_dir), TrajectoryStore.open(held_dir)
S = int(train.meta["steps"])
# per-step weights: 1 / (untrained error)^2, so every step counts alike in relative terms
with torch.no_grad():
    rows = np.arange(0, len(train), 7)
    x, s, c, w, tgt = train.batch(rows, "cpu")
    e = ((model.model.apply_model(x, s, c_crossattn=c) - tgt) ** 2).flatten(1).mean(1)
    st = train.step_of(rows)
    base_mse = np.array([float(e[st == k].mean()) for k in range(S)])
weight_of_step = torch.tensor(1.0 / base_mse, dtype=torch.float32)
# The teacher (and the untrained baseline) stay the unchanged network when its weights train.
teacher = copy.deepcopy(model.model).requires_grad_(False) if mode == "full" else model.model
groups = [{"params": params, "lr": 1e-3}]
if mode == "full":
    dm.requires_grad_(True)
    groups.append({"params": list(dm.parameters()), "lr": 1e-4})
opt = torch.optim.AdamW(groups, weight_decay=0.0)
base_lr = [g["lr"] for g in groups]
t0 = time.time()
for k in range(steps):
    r = batch_indices(0, k, len(train), batch)
    x, s, c, w, tgt = train.batch(r, "cpu")
    wt = weight_of_step[torch.from_numpy(train.step_of(np.sort(r)))]
    for gp, lr in zip(opt.param_groups, base_lr):
        gp["lr"] = lr_at(k, steps, lr, 0.1)
    loss = (((student(x, s, c, w) - tgt) ** 2).flatten(1).mean(1) * wt).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if k % 100 == 0:
        print(k, round(float(loss.detach()), 4), round(time.time() - t0), flush=True)
train_seconds = time.time() - t0
def teacher_forced(store):
    tot, cnt = np.zeros(S), np.zeros(S); base = np.zeros(S)
    with torch.no_grad():
        for a in range(0, len(store), 240):
            rows = np.arange(a, min(a + 240, len(store)))
            x, s, c, w, tgt = store.batch(rows, "cpu")
            st = store.step_of(rows)
            np.add.at(tot, st, ((student(x, s, c, w) - tgt) ** 2).flatten(1).mean(1).double().numpy())
            plain = teacher.apply_model(x, s, c_crossattn=c)
            np.add.at(base, st, ((plain - tgt) ** 2).flatten(1).mean(1).double().numpy())
            np.add.at(cnt, st, 1)
    return np.sqrt(base / cnt), np.sqrt(tot / cnt)
b, t = teacher_forced(held)
res = {"mode": mode, "steps": steps, "batch": batch, "train_seconds": round(train_seconds),
       "parameters": sum(p.numel() for p in params),
       "teacher_forced_cut": (b / t).round(2).tolist(),
       "teacher_forced_cut_overall": round(float(np.sqrt((b ** 2).mean() / (t ** 2).mean())), 2)}
# sampled: Euler, 20 steps, CFG vs student vs cond-only, same noise; 16 held-out prompts x 2 seeds, w 3.33 / 5.67
import comfy.samplers
sig = comfy.samplers.calculate_sigmas(ms, "normal", S).float()
prompts = held.meta["prompts"][:16]
emb = encode_prompts(clip, prompts).repeat(2, 1, 1)
empty = encode_prompts(clip, [""]).expand(len(emb), -1, -1)
noise = torch.randn(len(emb), 3, 32, 32, generator=torch.Generator().manual_seed(1000))
def sample(fn):
    x = ms.noise_scaling(sig[0], noise, torch.zeros_like(noise), max_denoise=True)
    for i in range(S):
        sg = sig[i].expand(len(x))
        d = fn(x, sg)
        x = x + (x - d) / sig[i] * (sig[i + 1] - sig[i]) if sig[i + 1] > 0 else d
    return x
cuts = []
with torch.no_grad():
    for wv in (1 + 7 / 3, 1 + 14 / 3):
        wt = torch.full((len(emb),), wv)
        def cfgfn(x, sg):
            dc = teacher.apply_model(x, sg, c_crossattn=emb); du = teacher.apply_model(x, sg, c_crossattn=empty)
            return du + wv * (dc - du)
        ref = sample(cfgfn)
        cond = sample(lambda x, sg: teacher.apply_model(x, sg, c_crossattn=emb))
        stu = sample(lambda x, sg: student(x, sg, emb, wt))
        r0, r1 = float(((cond - ref) ** 2).mean().sqrt()), float(((stu - ref) ** 2).mean().sqrt())
        cuts.append({"w": round(wv, 2), "rmse_untrained": round(r0, 4), "rmse_trained": round(r1, 4),
                     "cut": round(r0 / r1, 2)})
res["sampled"] = cuts
print(json.dumps(res))
json.dump(res, open(out, "w"), indent=1)
