"""Full-size benchmark (issue 33): ComfyUI's path and the pack's, side by side, on networks of the
sizes users run, built with random weights through ComfyUI's own model classes (no downloads).

    .host/venv/bin/python -m tools.benchmark.full_size                 # the CPU configuration
    .host/venv/bin/python -m tools.benchmark.full_size --config gpu    # SDXL + Flux-dev in bf16 (CUDA)
    .host/venv/bin/python -m tools.benchmark.full_size --quick --out /tmp/fs   # tiny nets, one round

A benchmark, not a timed test: it writes ``docs/benchmark/full_size/<config>.json`` (hardware,
host and torch versions, every run's seconds) and the table of ``docs/performance.md``.

What runs. Each network is a ``comfy.supported_models`` config (SD1.5 / SDXL UNet, Flux DiT) ->
``config.get_model`` -> ``ModelPatcher``, its parameters drawn at random (ComfyUI's ops skip
initialisation). Every row is executed the way ComfyUI's executor runs its nodes: the stock
nodes' and the pack's node classes, in-process (no server: the graph overhead is not what is
measured here). Runs of one group (the guiders on SamplerCustomAdvanced / the Guided Sampler;
the KSampler and the patched KSampler; the inversion round trips) are timed in rounds, each
round running every variant of the group once in a rotated order, so that a slow spell of this
shared machine hits every variant alike; a row's ratio is the median over rounds of its time
divided by its baseline's time in the same round (for a group of two this is the median of
alternating pairs), with the interquartile range of those ratios.

Per row: NFE per image and forward calls (counted by a forward pre-hook on the diffusion model:
nothing of the pack's own record is trusted), the wall-time ratio, seconds per model evaluation
(a forward call of the whole model batch), peak memory and host syncs per step.

- Host syncs. On CUDA, ``torch.cuda.set_sync_debug_mode("warn")``: every synchronising call
  warns, and each warning is booked by the file it came from. On every device, a
  ``torch.overrides.TorchFunctionMode`` counts the calls that read a tensor back to the host
  (``item``, ``__bool__``, ``tolist``, ``__float__``, ``__int__``, ``__index__``, ``numpy``,
  ``cpu`` and ``to`` a CPU device), booked by the innermost frame outside torch: the pack's code
  (this checkout, ``tools/`` and ``tests/`` excluded), ComfyUI's, or other. On the CPU these are
  conversions that would be syncs on a GPU when the tensor lives there (ComfyUI keeps some, e.g.
  the CPU copy of the schedule, on the host), so they are an upper bound. Only calls inside
  ``comfy.samplers.KSAMPLER.sample`` (every pack sampler and inversion runs through a KSAMPLER)
  after its first model evaluation count as "in the step loop"; reads in that call before the
  first evaluation (a sampler reading its schedule once, ``sigmas.tolist()``) are reported apart
  as set-up reads per run, and the guider's own set-up before the call and the record read
  once after it are outside. ``cpu``, ``numpy`` and ``to`` a CPU device count only from a tensor
  on another device (on the CPU they are no-ops). The mode costs a Python call per
  torch call, so syncs are counted in the untimed warm-up run of each variant, never in a timed
  one.
- Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus what was allocated before the run. CPU: tracemalloc does not see torch's allocations,
  so the process's resident-set high-water mark is used: reset before each run by writing 5 to
  ``/proc/self/clear_refs`` and read from ``VmHWM`` in ``/proc/self/status`` after it, minus the
  resident set before the run. glibc keeps freed heap memory, so large allocations are made
  to go through mmap (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, fixed, which also stops its
  dynamic growth), which returns them to the system when freed: the figure is then what the
  run itself added at its peak, to within the small-allocation heap. Without clear_refs a
  sampling thread (every 2 ms) reads the resident set instead.
- The hallucination score (trajectory variance, always on in the pack's guiders) costs no
  evaluation; its cost is the time spent in ``TrajectoryVariance.note`` and ``scores`` during
  the pack's CFG runs, timed around each call (exact on the CPU, which runs synchronously), as
  a share of those runs' wall time; where the configuration asks (GPU), also a variant of the
  pack's CFG with the score switched off, timed in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tools.benchmark import stats
from tools.benchmark.methods import APG, CFG, CFG_PP_LAMBDA
from tools.paths import BENCHMARK_RESULTS, DOCS, HOST_DIR, README, REPO

RESULTS_DIR = BENCHMARK_RESULTS / "full_size"
PERFORMANCE_PAGE = DOCS / "performance.md"
PAGE_MARKERS = ("<!-- full-size:{}:start -->", "<!-- full-size:{}:end -->")

# Every row the benchmark reports, in table order; each network reports each row (run, or
# skipped with the reason).
ROWS = ("cfg", "ksampler_patch", "apg", "ag", "linear_ag", "cfg_pp", "agd", "edict", "bdia", "o_belm",
        "hallucination_score")
INVERSION_CFG_DEFAULT = 3.0  # the inversion nodes' default scale


# --------------------------------------------------------------------------- configurations

def sd15_unet() -> dict:
    """SD1.5's UNet config (ComfyUI's own, comfy/model_detection.py)."""
    return {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
            "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
            "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
            "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "use_temporal_attention": False, "use_temporal_resblock": False}


def sdxl_unet() -> dict:
    return {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
            "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
            "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
            "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "use_temporal_attention": False, "use_temporal_resblock": False}


def tiny_unet() -> dict:
    """SD1.5's layout (two levels, one transformer each, CLIP-L context), 32 channels: --quick."""
    return {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
            "num_res_blocks": [1, 1], "transformer_depth": [1, 1, 1, 1], "channel_mult": [1, 2],
            "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
            "num_heads": 4, "transformer_depth_output": [1, 1, 1, 1], "use_temporal_attention": False,
            "use_temporal_resblock": False}


def flux_dit(depth: int, single: int, hidden: int = 3072, heads: int = 24, context: int = 4096,
             vec: int = 768, axes=(16, 56, 56)) -> dict:
    """Flux-dev's DiT config (19 double and 38 single blocks, width 3072), cut to ``depth`` / ``single``."""
    return {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "patch_size": 2,
            "vec_in_dim": vec, "context_in_dim": context, "hidden_size": hidden, "mlp_ratio": 4.0,
            "num_heads": heads, "depth": depth, "depth_single_blocks": single, "axes_dim": list(axes),
            "theta": 10000, "qkv_bias": True}


@dataclass
class Net:
    name: str
    label: str
    kind: str  # "sd15", "sdxl" or "flux": which comfy.supported_models class
    unet: dict
    latent: int  # latent side (image side / 8)
    text_tokens: int
    batches: tuple = (1,)
    rows: tuple = ROWS  # rows run on this network (the others are reported as skipped, with why)
    rows_by_batch: dict = field(default_factory=dict)  # batch -> rows, where a batch runs fewer
    skip_reason: str = ""


@dataclass
class Config:
    name: str
    device: str  # "cpu" or "cuda"
    dtype: str  # "float32" or "bfloat16"
    nets: list
    steps: int
    rounds: int
    group_rounds: dict = field(default_factory=dict)  # group -> rounds, where it differs from ``rounds``
    threads: Optional[int] = 1
    inversion_cfg: float = 1.0
    # Latent side of the untimed run that counts host syncs (the code path does not depend on
    # the size; the sync-counting mode slows every torch call): None = the net's own latent.
    sync_latent: Optional[int] = 8
    hallucination_variant: bool = False  # time the pack's CFG with the score off too
    note: str = ""


CPU_NOTE = ("SD1.5's UNet at full width and depth (860 M parameters) at 256x256 (32x32 latents), not 512x512: "
            "on this machine's shared core one batch-1 forward at 64x64 latents took 10 s and a batch-2 (CFG) "
            "forward 38-45 s, so one round of every row would take over 15 minutes; at 32x32 the same forwards "
            "take 5 s and 8 s. The Flux DiT keeps Flux-dev's width (3072, 24 heads, T5 context 4096) cut to one "
            "double and one single block, 256 text tokens, at the same latent size; it runs the rows whose "
            "per-evaluation bookkeeping differs by model family (CFG, the patched KSampler, AG), "
            "the inversions and the other guiders on the UNet only, to fit the run in ~25 minutes.")

FLUX_CPU_ROWS = ("cfg", "ksampler_patch", "ag", "hallucination_score")


def config_for(name: str) -> Config:
    if name == "cpu":
        return Config("cpu", "cpu", "float32", [
            Net("sd15", "SD1.5-size UNet (860 M), 256x256", "sd15", sd15_unet(), 32, 77),
            Net("flux_cut", "Flux-dev-width DiT, 1+1 blocks, 256x256", "flux", flux_dit(1, 1), 32, 256,
                rows=FLUX_CPU_ROWS, skip_reason="not run on the CPU (time); the GPU configuration runs it")],
            steps=2, rounds=3, group_rounds={"ksampler": 4, "inversion": 2}, threads=1, inversion_cfg=1.0,
            sync_latent=8, note=CPU_NOTE)
    if name == "gpu":
        return Config("gpu", "cuda", "bfloat16", [
            Net("sdxl", "SDXL UNet (2.6 B), 1024x1024", "sdxl", sdxl_unet(), 128, 77, batches=(1, 4)),
            Net("flux_dev", "Flux-dev-size DiT (12 B), 1024x1024", "flux", flux_dit(19, 38), 128, 512,
                batches=(1, 4), rows_by_batch={4: ("cfg", "ksampler_patch", "ag", "hallucination_score")},
                skip_reason="not run at this batch size (device time)")],
            steps=4, rounds=3, threads=None, inversion_cfg=INVERSION_CFG_DEFAULT, hallucination_variant=True,
            sync_latent=16,
            note="Full SDXL and full Flux-dev-size DiT in bf16 at 1024x1024, batch 1 and 4.")
    if name == "quick":
        return Config("quick", "cpu", "float32", [
            Net("tiny_unet", "tiny SD1.5-layout UNet (32 channels), 64x64", "sd15", tiny_unet(), 8, 8),
            Net("tiny_flux", "tiny Flux DiT (width 64), 64x64", "flux",
                flux_dit(1, 1, hidden=64, heads=2, context=32, vec=16, axes=(8, 12, 12)), 8, 8)],
            steps=2, rounds=1, threads=1, inversion_cfg=INVERSION_CFG_DEFAULT, hallucination_variant=True,
            sync_latent=None, note="Harness check on tiny networks: the figures mean nothing.")
    if name == "gpu-dry":  # the GPU configuration's code on tiny nets, on whatever device there is
        cfg = config_for("quick")
        cfg.name, cfg.dtype, cfg.inversion_cfg = "gpu-dry", "bfloat16", INVERSION_CFG_DEFAULT
        gpu = {net.kind: net for net in config_for("gpu").nets}
        for net in cfg.nets:
            net.batches = (1, 4)
            same = gpu.get(net.kind) or gpu["sdxl"]  # the tiny UNet stands for SDXL
            net.rows_by_batch, net.skip_reason = same.rows_by_batch, same.skip_reason
        cfg.note = "The GPU configuration's code path (bf16, batch 1 and 4) on tiny networks."
        return cfg
    raise SystemExit(f"unknown configuration {name!r}")


# --------------------------------------------------------------------------- measuring


def _node_out(result):
    return tuple(result.args) if hasattr(result, "args") else tuple(result)


# Reads of a tensor's values by the host. ``cpu``, ``numpy`` and ``to`` a CPU device are counted only
# from a tensor on another device (on the CPU they are no-ops, and the same call with a CPU
# tensor moves host data to the device on a GPU: LinearAG's coefficients, EDICT's pair).
HOST_READS = {"item", "__bool__", "tolist", "__float__", "__int__", "__index__"}
MOVES = {"cpu", "numpy", "to"}
PACK_EXCLUDED = ("tools", "tests")


def origin_of(filename: str) -> str:
    path = os.path.realpath(filename)
    host = os.path.realpath(HOST_DIR)
    repo = os.path.realpath(REPO)
    if path.startswith(host + os.sep):
        # The checkout is linked into the host's custom_nodes: that is still the pack.
        return "pack" if f"{os.sep}custom_nodes{os.sep}" in path[len(host):] else "comfyui"
    if path.startswith(repo + os.sep):
        rel = path[len(repo) + 1:]
        return "other" if rel.split(os.sep)[0] in PACK_EXCLUDED else "pack"
    return "other"


def _call_site(skip_file: str) -> tuple:
    """(origin, "file:line") of the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    torch_dir = os.path.dirname(os.path.realpath(__import__("torch").__file__))
    while frame is not None:
        name = os.path.realpath(frame.f_code.co_filename)
        if not name.startswith(torch_dir) and name != skip_file and "contextlib" not in name:
            rel = name
            for root in (os.path.realpath(HOST_DIR), os.path.realpath(REPO)):
                if name.startswith(root + os.sep):
                    rel = name[len(root) + 1:]
            return origin_of(name), f"{rel}:{frame.f_lineno}"
        frame = frame.f_back
    return "other", "?"


class SyncCounter:
    """Host reads inside KSAMPLER.sample, by origin and call site (see the module docstring)."""

    def __init__(self, cuda: bool, diffusion_model):
        from torch.overrides import TorchFunctionMode

        counter = self
        self.cuda = cuda
        self.diffusion_model = diffusion_model
        self.active = 0
        self.in_loop = False  # the KSAMPLER call has evaluated the model at least once
        self.reads: Counter = Counter()  # (origin, site, name) -> count, in the loop
        self.setup_reads: Counter = Counter()  # the same before the call's first model evaluation
        self.syncs: Counter = Counter()  # CUDA: (origin, site) -> count
        me = os.path.realpath(__file__)

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if counter.active:
                    name = getattr(func, "__name__", "")
                    if name in HOST_READS or (name in MOVES and _off_device_to_cpu(name, args, kwargs)):
                        origin, site = _call_site(me)
                        book = counter.reads if counter.in_loop else counter.setup_reads
                        book[(origin, site, name)] += 1
                return func(*args, **kwargs)

        self.mode = Mode()

    @contextlib.contextmanager
    def counting(self):
        import comfy.samplers
        import torch

        original = comfy.samplers.KSAMPLER.sample
        counter = self

        def sample(ksampler, *args, **kwargs):
            counter.active += 1
            counter.in_loop = False
            if counter.cuda and counter.active == 1:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(ksampler, *args, **kwargs)
            finally:
                counter.active -= 1
                if counter.cuda and counter.active == 0:
                    torch.cuda.set_sync_debug_mode("default")

        def started(module, args):
            if counter.active:
                counter.in_loop = True

        comfy.samplers.KSAMPLER.sample = sample
        hook = self.diffusion_model.register_forward_pre_hook(started)
        try:
            with warnings.catch_warnings(), self.mode:
                warnings.simplefilter("always")
                warnings.showwarning = self._warned
                yield self
        finally:
            comfy.samplers.KSAMPLER.sample = original
            hook.remove()

    def _warned(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            if self.in_loop:
                self.syncs[(origin_of(filename), f"{Path(filename).name}:{lineno}")] += 1
            return
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")

    def summary(self, steps: int) -> dict:
        per = lambda n: n / max(steps, 1)  # noqa: E731
        by_origin = Counter()
        for (origin, _site, _name), n in self.reads.items():
            by_origin[origin] += n
        pack_sites = Counter()
        for (origin, site, name), n in self.reads.items():
            if origin == "pack":
                pack_sites[f"{site} ({name})"] += n
        setup = Counter()
        for (origin, _site, _name), n in self.setup_reads.items():
            setup[origin] += n
        out = {"host_reads_per_step": {k: per(v) for k, v in sorted(by_origin.items())},
               "host_reads_per_run": dict(sorted(by_origin.items())),
               "pack_host_read_sites": dict(pack_sites.most_common()),  # site -> reads per run, in the loop
               "setup_host_reads_per_run": dict(sorted(setup.items())),
               "pack_setup_read_sites": {f"{site} ({name})": n for (origin, site, name), n in
                                         self.setup_reads.items() if origin == "pack"}}
        if self.cuda:
            sync_origin = Counter()
            for (origin, _site), n in self.syncs.items():
                sync_origin[origin] += n
            out["cuda_syncs_per_step"] = {k: per(v) for k, v in sorted(sync_origin.items())}
            out["pack_cuda_sync_sites"] = {site: n for (origin, site), n in self.syncs.items() if origin == "pack"}
        return out


def _off_device_to_cpu(name: str, args, kwargs) -> bool:
    import torch

    source = args[0] if args else None
    if not isinstance(source, torch.Tensor) or source.device.type == "cpu":
        return False
    if name in ("cpu", "numpy"):
        return True
    for value in list(args[1:]) + [kwargs.get("device")]:
        if isinstance(value, torch.device) and value.type == "cpu":
            return True
        if isinstance(value, str) and value.startswith("cpu"):
            return True
    return False


class Memory:
    """Peak memory of one run, in MiB above what was in use before it (module docstring)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.method = "torch.cuda.max_memory_allocated" if self.cuda else None
        if not self.cuda:
            self._tune_malloc()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "VmHWM after clear_refs (resident-set high-water mark), mmap threshold 1 MiB"
            except OSError:
                self.method = "resident set sampled every 2 ms, mmap threshold 1 MiB"

    @staticmethod
    def _tune_malloc():
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
        except OSError:
            pass

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024

    @contextlib.contextmanager
    def peak(self, out: dict):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            yield
            torch.cuda.synchronize()
            out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
            return
        gc.collect()  # cheap: run_net froze the long-lived objects (gc.freeze)
        if self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")
            before = self._status("VmRSS")  # after the reset: the high-water mark is at least this
            yield
            # The kernel's RSS counters are batched per CPU: a run that adds nothing can read a
            # fraction of a MiB below zero.
            out["peak_mib"] = max(0, self._status("VmHWM") - before) / 2**20
            return
        before = self._status("VmRSS")
        high, stop = [before], threading.Event()

        def sample():
            while not stop.is_set():
                high[0] = max(high[0], self._status("VmRSS"))
                stop.wait(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        out["peak_mib"] = (high[0] - before) / 2**20


class ForwardCounter:
    """Forward calls of the diffusion model and the rows (samples x conditions) they carried."""

    def __init__(self, diffusion_model):
        self.calls = 0
        self.rows = 0
        self.handle = diffusion_model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        x = args[0] if args else None
        self.rows += int(x.shape[0]) if hasattr(x, "shape") else 0

    def reset(self):
        self.calls = self.rows = 0


class ScoreTimer:
    """Seconds spent in the hallucination score (TrajectoryVariance.note and scores)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.seconds = 0.0

    @contextlib.contextmanager
    def timing(self):
        import torch
        from guidance_lab.guiders import trajectory_variance as tv

        cls, timer = tv.TrajectoryVariance, self
        originals = {name: getattr(cls, name) for name in ("note", "scores")}

        def timed(fn):
            def call(*args, **kwargs):
                if timer.cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if timer.cuda:
                        torch.cuda.synchronize()
                    timer.seconds += time.perf_counter() - start
            return call

        for name, fn in originals.items():
            setattr(cls, name, timed(fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(cls, name, fn)


@contextlib.contextmanager
def score_off():
    """The pack's guiders without the hallucination score (GuidedRun builds no TrajectoryVariance)."""
    from guidance_lab.guiders import guided_run

    original = guided_run.TrajectoryVariance
    guided_run.TrajectoryVariance = lambda *args, **kwargs: None
    try:
        yield
    finally:
        guided_run.TrajectoryVariance = original


@contextlib.contextmanager
def fixed_switch(at_step: int):
    """AG's agreement computed as always, then replaced by a step schedule, so that every sample
    crosses the threshold at step ``at_step``: AG's own code and costs at a switch fixed in
    advance (random weights give no meaningful agreement)."""
    from guidance_lab.guiders import adaptive

    original = adaptive.agreement

    def agreement(space, cond, uncond, step):
        real = original(space, cond, uncond, step)
        return real * 0 + (1.0 if step.index >= at_step else -1.0)

    adaptive.agreement = agreement
    try:
        yield
    finally:
        adaptive.agreement = original


# --------------------------------------------------------------------------- networks


def build_net(net: Net, cfg: Config):
    """(ModelPatcher, diffusion model, parameter count) with random weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models as sm
    import torch

    from guidance_lab.nodes.bridge.compat import flux_network_kwargs

    dtype = getattr(torch, cfg.dtype)
    if net.kind == "flux":
        config = sm.Flux(flux_network_kwargs(dict(net.unet)))
    else:
        config = {"sd15": sm.SD15, "sdxl": sm.SDXL}[net.kind](dict(net.unet))
    config.set_inference_dtype(dtype, None)
    device = comfy.model_management.get_torch_device()
    model = config.get_model({}, device=device)
    model.diffusion_model.to(device)
    init_weights(model.diffusion_model, seed=0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device,
                                               offload_device=comfy.model_management.unet_offload_device())
    params = sum(p.numel() for p in model.diffusion_model.parameters())
    return patcher, model.diffusion_model, params


def init_weights(module, seed: int) -> None:
    """Fan-in scaled normal weights, unit norms, small biases (ComfyUI's ops leave them empty);
    drawn on the module's device in place."""
    import torch

    g = None
    with torch.no_grad():
        for mod in module.modules():
            norm = "Norm" in type(mod).__name__
            for name, p in mod.named_parameters(recurse=False):
                if g is None or g.device != p.device:
                    g = torch.Generator(device=p.device).manual_seed(seed)
                if norm:
                    p.fill_(1.0 if name in ("weight", "scale") else 0.0)
                elif p.ndim >= 2:
                    p.normal_(0.0, 1.0 / p[0].numel() ** 0.5, generator=g)
                else:
                    p.uniform_(-0.05, 0.05, generator=g)
            for name, b in mod.named_buffers(recurse=False):
                if b.is_floating_point() and not torch.isfinite(b).all():
                    b.zero_()


def conditioning(net: Net, seed: int, scale: float, batch_rows: int = 1):
    """A CONDITIONING of the shapes the family's text encoders give."""
    import torch

    g = torch.Generator().manual_seed(seed)
    context = net.unet.get("context_dim") or net.unet.get("context_in_dim")
    options = {}
    if net.kind == "sdxl":
        options = {"pooled_output": scale * torch.randn(batch_rows, 1280, generator=g), "width": 1024,
                   "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    elif net.kind == "flux":
        options = {"pooled_output": scale * torch.randn(batch_rows, net.unet["vec_in_dim"], generator=g),
                   "guidance": 3.5}
    return [[scale * torch.randn(batch_rows, net.text_tokens, context, generator=g), options]]


# --------------------------------------------------------------------------- the rows' runs


@dataclass
class Variant:
    name: str
    label: str
    run: Callable  # (seed) -> None
    group: str
    pack: bool
    context: Callable = contextlib.nullcontext  # () -> a context the run needs (score off, fixed switch)


@dataclass
class Row:
    name: str
    label: str
    variant: Optional[str]
    baseline: Optional[str]
    memory_reference: Optional[str]
    target: str
    extra: dict = field(default_factory=dict)


def variants_for(net: Net, ctx: dict, cfg: Config) -> "tuple[list, list]":
    """The variants (timed runs) and rows of one network at one batch size."""
    import nodes as comfy_nodes
    import torch
    from comfy_extras import nodes_apg
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.guiders.linear_ag import FEATURES, LinearAGPolicy
    from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
    from guidance_lab.nodes.apg import CUSTOM, APGGuiderNode
    from guidance_lab.nodes.bidirectional import BidirectionalInvertNode, BidirectionalSampleNode
    from guidance_lab.nodes.cfg import CFGGuiderNode
    from guidance_lab.nodes.ddim_inversion import DDIMInvertNode
    from guidance_lab.nodes.edict import EdictInvertNode, EdictSampleNode
    from guidance_lab.nodes.guider_common import build_guider
    from guidance_lab.nodes.model_patch import GuidanceModelPatchNode, GuidanceReportNode
    from guidance_lab.nodes.sampling import GuidedSamplerNode, SamplerSelectNode
    from guidance_lab.samplers.bidirectional import EDIT_GAMMA
    from guidance_lab.samplers.edict import DEFAULT_P

    model, pos, neg, latent, steps = ctx["model"], ctx["positive"], ctx["negative"], ctx["latent"], cfg.steps
    sigmas = _node_out(cs.BasicScheduler.execute(model, "normal", steps, 1.0))[0]
    half = max(1, steps // 2)

    def stock(guider, sampler_name="euler"):
        def run(seed):
            noise = _node_out(cs.RandomNoise.execute(seed))[0]
            sampler = _node_out(cs.KSamplerSelect.execute(sampler_name))[0]
            return _node_out(cs.SamplerCustomAdvanced.execute(noise, guider(), sampler, sigmas, latent))[0]
        return run

    def pack(guider, sampler_name=None):
        def run(seed):
            noise = _node_out(cs.RandomNoise.execute(seed))[0]
            sampler = _node_out(SamplerSelectNode.execute(sampler_name) if sampler_name
                                else cs.KSamplerSelect.execute("euler"))[0]
            return _node_out(GuidedSamplerNode.execute(noise, guider(), sampler, sigmas, latent))[0]
        return run

    comfy_cfg = lambda scale: lambda: _node_out(cs.CFGGuider.execute(model, pos, neg, scale))[0]  # noqa: E731
    pack_cfg = lambda scale: lambda: _node_out(CFGGuiderNode.execute(model, pos, neg, scale))[0]  # noqa: E731
    apg_model = _node_out(nodes_apg.APG.execute(model, APG["eta"], APG["norm_threshold"], APG["momentum"]))[0]

    def comfy_apg():
        return _node_out(cs.CFGGuider.execute(apg_model, pos, neg, CFG))[0]

    def pack_apg():
        return _node_out(APGGuiderNode.execute(model, pos, neg, CFG, CUSTOM, APG["eta"], APG["norm_threshold"],
                                               APG["momentum"]))[0]

    def ag():
        return _node_out(AdaptiveGuiderNode.execute(pack_cfg(CFG)(), 0.995, "auto"))[0]

    coefficients = torch.zeros(steps, len(FEATURES), dtype=torch.float64)
    coefficients[:, 0] = 1.0  # eps_u predicted as eps_c: any values cost the same

    def linear_ag():
        return build_guider("LinearAG Guider (Guidance Lab)", model, pos, neg,
                            lambda: LinearAGPolicy(CFG, coefficients, frozenset({0})))

    patched = _node_out(GuidanceModelPatchNode.execute(model, pack_cfg(CFG)()))[0]

    def ksampler(m, report: bool):
        def run(seed):
            out = comfy_nodes.KSampler().sample(m, seed, steps, CFG, "euler", "normal", pos, neg, latent)[0]
            if report:
                GuidanceReportNode.execute(out)
            return out
        return run

    g, b = "guiders", "ksampler"
    variants = [
        Variant("comfy_cfg", f"ComfyUI CFGGuider, CFG {CFG:g}", stock(comfy_cfg(CFG)), g, False),
        Variant("cfg", f"Guidance Lab CFG Guider, CFG {CFG:g}", pack(pack_cfg(CFG)), g, True),
        Variant("comfy_apg", "ComfyUI APG node + CFGGuider", stock(comfy_apg), g, False),
        Variant("apg", "Guidance Lab APG Guider", pack(pack_apg), g, True),
        Variant("ag", f"AG around the CFG Guider, switch fixed at step {half - 1}", pack(ag), g, True,
                context=lambda: fixed_switch(half - 1)),
        Variant("linear_ag", "LinearAG, uncond evaluated at step 0 only", pack(linear_ag), g, True),
        Variant("comfy_cfg_pp", f"ComfyUI CFGGuider + euler_cfg_pp, lambda {CFG_PP_LAMBDA:g}",
                stock(comfy_cfg(CFG_PP_LAMBDA), "euler_cfg_pp"), g, False),
        Variant("cfg_pp", f"Guidance Lab CFG Guider + the pack's euler_cfg_pp, lambda {CFG_PP_LAMBDA:g}",
                pack(pack_cfg(CFG_PP_LAMBDA), "euler_cfg_pp"), g, True),
        Variant("comfy_cfg_1", "ComfyUI CFGGuider, CFG 1 (one pass)", stock(comfy_cfg(1.0)), g, False),
        Variant("comfy_ksampler", f"ComfyUI KSampler, CFG {CFG:g}", ksampler(model, False), b, False),
        Variant("ksampler_patch", "KSampler + Guidance Model Patch (CFG) + Guidance Report",
                ksampler(patched, True), b, True),
    ]
    if cfg.hallucination_variant:
        variants.append(Variant("cfg_score_off", "Guidance Lab CFG Guider, hallucination score off",
                                pack(pack_cfg(CFG)), g, True, context=score_off))

    rows = [
        Row("cfg", "CFG Guider vs CFGGuider", "cfg", "comfy_cfg", "comfy_cfg", "overhead"),
        Row("ksampler_patch", "Guidance Model Patch + KSampler vs KSampler", "ksampler_patch", "comfy_ksampler",
            "comfy_ksampler", "overhead"),
        Row("apg", "APG Guider vs ComfyUI's APG + CFGGuider", "apg", "comfy_apg", "comfy_apg", "memory"),
        Row("ag", f"AG, fixed switch at step {half - 1} of {steps}, vs the CFG Guider", "ag", "cfg", "cfg", "saving"),
        Row("linear_ag", "LinearAG (uncond at step 0 only) vs the CFG Guider", "linear_ag", "cfg", "cfg", "saving"),
        Row("cfg_pp", "CFG++ (pack euler_cfg_pp) vs ComfyUI's euler_cfg_pp", "cfg_pp", "comfy_cfg_pp",
            "comfy_cfg_pp", "memory"),
    ]

    # AGD: adapters at the reference's sizes (width 320, MLP 1280), random weights, on the UNet's
    # cross-attention hooks; DiTs have none (the loader refuses them), so the row says so there.
    agd_reason = _agd_variant(net, ctx, variants, pack, g)
    rows.append(Row("agd", "AGD (reference-size adapters) vs ComfyUI CFG; adapters' share vs CFG 1",
                    "agd" if not agd_reason else None, "comfy_cfg", "comfy_cfg_1", "agd",
                    {"skipped": agd_reason} if agd_reason else {}))

    # The inversions: round trips (invert, then sample back) along the last `steps` steps of a
    # schedule of steps + 1 (a flow model cannot start a DDIM inversion at sigma 1).
    full = _node_out(cs.BasicScheduler.execute(model, "normal", steps + 1, 1.0))[0]
    inv_sigmas = _node_out(cs.SplitSigmas.execute(full, 1))[1]
    source = {"samples": ctx["source"]}
    icfg = cfg.inversion_cfg
    euler = _node_out(cs.KSamplerSelect.execute("euler"))[0]

    def ddim(seed):
        inverted = _node_out(DDIMInvertNode.execute(model, pos, neg, icfg, inv_sigmas, source))[0]
        return _node_out(cs.SamplerCustom.execute(model, False, 0, icfg, pos, neg, euler, inv_sigmas, inverted))[0]

    def edict(seed):
        pair = _node_out(EdictInvertNode.execute(model, pos, neg, icfg, inv_sigmas, DEFAULT_P, source, "float64"))[0]
        return _node_out(EdictSampleNode.execute(model, pos, neg, icfg, inv_sigmas, DEFAULT_P, pair))[0]

    def bidirectional(method):
        def run(seed):
            pair = _node_out(BidirectionalInvertNode.execute(model, pos, neg, icfg, inv_sigmas, method, EDIT_GAMMA,
                                                             source, "float64"))[0]
            return _node_out(BidirectionalSampleNode.execute(model, pos, neg, icfg, inv_sigmas, method, EDIT_GAMMA,
                                                             pair))[0]
        return run

    i = "inversion"
    variants += [
        Variant("ddim", f"DDIM Invert + SamplerCustom (euler), CFG {icfg:g}", ddim, i, False),
        Variant("edict", f"EDICT Invert + EDICT Sample, CFG {icfg:g}", edict, i, True),
        Variant("bdia", f"BDIA Invert + Sample (gamma {EDIT_GAMMA:g}), CFG {icfg:g}", bidirectional("bdia"), i, True),
        Variant("o_belm", f"O-BELM Invert + Sample, CFG {icfg:g}", bidirectional("o_belm"), i, True),
    ]
    rows += [
        Row("edict", "EDICT round trip vs DDIM inversion + sampling", "edict", "ddim", "ddim", "inversion",
            {"bound": 2.05}),
        Row("bdia", "BDIA round trip vs DDIM inversion + sampling", "bdia", "ddim", "ddim", "inversion",
            {"bound": 1.10}),
        Row("o_belm", "O-BELM round trip vs DDIM inversion + sampling", "o_belm", "ddim", "ddim", "inversion",
            {"bound": 1.10}),
        Row("hallucination_score", "Hallucination score (trajectory variance) inside the CFG Guider's runs",
            "cfg_score_off" if cfg.hallucination_variant else None, None, None, "score"),
    ]
    wanted = set(net.rows_by_batch.get(ctx["batch"], net.rows))
    needed = set()
    for row in rows:
        if row.name in wanted:
            needed |= {row.variant, row.baseline, row.memory_reference}
    if "hallucination_score" in wanted:
        needed |= {"cfg"}
    if "agd" in wanted:
        needed |= {"comfy_cfg", "comfy_cfg_1"}
    variants = [v for v in variants if v.name in needed]
    for row in rows:
        if row.name not in wanted and "skipped" not in row.extra:
            row.variant, row.extra = None, {"skipped": net.skip_reason or "not run in this configuration"}
    return variants, rows


def _agd_variant(net: Net, ctx: dict, variants: list, pack, group: str) -> str:
    """Adds the AGD variant to ``variants``; returns why not ("" if added)."""
    from guidance_lab.guiders.agd import AdapterConfig, AdapterSet
    from guidance_lab.nodes.agd import AGDGuiderNode
    from guidance_lab.nodes.bridge.agd import apply_adapters, attn2_layout, base_parameter_count
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    model = ctx["model"]
    layout = attn2_layout(model)
    if not layout:
        return (f"AGD runs on UNets only: {type(model.model.diffusion_model).__name__} has no cross-attention "
                "block with ComfyUI's attn2 patch hooks, where AGD's adapters sit (the pack refuses AGD on DiTs)")
    import torch

    adapters = AdapterSet(layout, AdapterConfig())  # the reference's sizes
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking: every weight moved (zero-initialised outputs would be a no-op)
        for p in adapters.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    try:
        loaded = apply_adapters(model, adapters, (1.0, 8.0), base_model_fingerprint(model), source="random")
    except ValueError as err:
        return f"the adapters do not load on this model: {err}"
    ctx["agd_parameters"] = adapters.parameter_count()
    ctx["agd_share_of_parameters"] = adapters.parameter_count() / max(base_parameter_count(model), 1)
    pos = ctx["positive"]
    variants.append(Variant("agd", f"AGD Guider (adapters width 320, MLP 1280), scale {CFG:g}",
                            pack(lambda: _node_out(AGDGuiderNode.execute(loaded, pos, CFG))[0]), group, True))
    return ""


# --------------------------------------------------------------------------- timing


def sync(cuda: bool):
    if cuda:
        import torch

        torch.cuda.synchronize()


def measure(variant: Variant, seed: int, counter: ForwardCounter, memory: Memory, cuda: bool,
            score: Optional["ScoreTimer"] = None) -> dict:
    out = {}
    counter.reset()
    timing = score.timing() if score is not None and variant.name == "cfg" else contextlib.nullcontext()
    with variant.context(), timing, memory.peak(out):
        sync(cuda)
        start = time.perf_counter()
        variant.run(seed)
        sync(cuda)
        out["seconds"] = time.perf_counter() - start
    out["forward_calls"], out["forward_rows"] = counter.calls, counter.rows
    return out


def time_group(variants: list, rounds: int, counter, memory, cuda, log, tag: str, score=None) -> dict:
    """Every variant once per round, in a rotated order; per variant its runs."""
    runs = {v.name: [] for v in variants}
    for r in range(rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        if r % 2 == 1:
            order = order[::-1]  # pairs alternate which goes first
        for v in order:
            runs[v.name].append(measure(v, 1000 + r, counter, memory, cuda, score))
        log(f"[full-size] {tag} round {r + 1}/{rounds}: "
            + ", ".join(f"{v.name} {runs[v.name][-1]['seconds']:.1f} s" for v in variants))
    return runs


def ratio_stats(a: list, b: list) -> dict:
    """Median and IQR over rounds of a[r] / b[r]."""
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "iqr": [float(np.percentile(ratios, 25)),
                                                          float(np.percentile(ratios, 75))],
            "rounds": len(ratios), "ratios": ratios}


# --------------------------------------------------------------------------- verdicts


def _interval_at_most(r: dict, bound: float) -> str:
    lo, hi = r["iqr"]
    return stats.judge_at_most(min(lo, r["median"]), max(hi, r["median"]), bound)


def _interval_at_least(lo: float, hi: float, bound: float) -> str:
    return stats.judge_at_least(lo, hi, bound)


def judge_row(row: Row, entry: dict, per: dict, cfg: Config, net: Net) -> list:
    """[(target, verdict, figures)] of one row; its per-variant figures in ``per``."""
    out = []
    v, base = per.get(row.variant), per.get(row.baseline)
    # Memory: every pack path against ComfyUI's for the same NFE per batch.
    if row.memory_reference and v and per.get(row.memory_reference):
        ref = per[row.memory_reference]["peak_mib"]
        entry["memory_ratio"] = v["peak_mib"] / ref if ref > 0 else None
        out.append(("peak memory <= 1.05x ComfyUI's for the same NFE per batch",
                    stats.exact(v["peak_mib"] <= 1.05 * ref + 1.0),
                    f"{v['peak_mib']:.0f} MiB vs {ref:.0f} MiB ({row.memory_reference})"))
    if row.target == "overhead" and v and base:
        t = entry["time_ratio"]
        out.append(("at most 1% slower at full size", _interval_at_most(t, 1.01),
                    f"{t['median']:.4f}x (IQR {t['iqr'][0]:.4f}-{t['iqr'][1]:.4f}, {t['rounds']} rounds)"))
    if row.target == "saving" and v and base:
        nfe_saved = 1 - v["nfe_per_image"] / base["nfe_per_image"]
        t = entry["time_ratio"]
        saved = [1 - x for x in (t["iqr"][1], t["median"], t["iqr"][0])]
        entry["nfe_saved_share"], entry["time_saved_share"] = nfe_saved, saved[1]
        bound = 0.9 * nfe_saved
        out.append(("wall time saved >= 0.9x the share of NFE saved", _interval_at_least(saved[0], saved[2], bound),
                    f"{saved[1]:.1%} of the time saved (IQR {saved[0]:.1%}-{saved[2]:.1%}) for {nfe_saved:.1%} of "
                    f"the NFE (bound {bound:.1%})"))
    if row.target == "agd" and v and base:
        t = entry["time_ratio"]
        verdict = _interval_at_most(t, 0.55)
        where = "" if cfg.device == "cuda" else " (a GPU target: measured here on the CPU)"
        out.append((f"at most 0.55x CFG's wall time at batch 1{where}",
                    verdict if net.batches[0] == 1 else stats.UNDECIDED,
                    f"{t['median']:.3f}x (IQR {t['iqr'][0]:.3f}-{t['iqr'][1]:.3f})"))
    if row.target == "inversion" and v and base:
        t = entry["time_ratio"]
        bound = row.extra["bound"]
        out.append((f"at most {bound:.2f}x DDIM inversion + sampling", _interval_at_most(t, bound),
                    f"{t['median']:.3f}x (IQR {t['iqr'][0]:.3f}-{t['iqr'][1]:.3f})"))
    # Host syncs of the pack's own code in the step loop.
    if v and row.variant and per[row.variant].get("syncs"):
        s = per[row.variant]["syncs"]
        pack_reads = s["host_reads_per_step"].get("pack", 0.0)
        cuda_pack = s.get("cuda_syncs_per_step", {}).get("pack", 0.0)
        sites = s.get("pack_cuda_sync_sites") or s["pack_host_read_sites"]
        named = "; ".join(f"{k}: {n} per run" for k, n in list(sites.items())[:4])
        figures = (f"{pack_reads:g} host reads per step in the pack's code"
                   + (f", {cuda_pack:g} CUDA syncs" if cfg.device == "cuda" else "")
                   + (f" ({named})" if named else ""))
        out.append(("zero host syncs in the step loop (or each named with its cost)",
                    stats.exact(pack_reads == 0 and cuda_pack == 0), figures))
    return out


# --------------------------------------------------------------------------- the run


def run_context(net: Net, model, batch: int, side: int) -> dict:
    """What every variant of ``net`` runs on: the model, prompts, an empty latent and a source
    latent to invert, at latent side ``side``."""
    import torch

    channels = 16 if net.kind == "flux" else 4
    g = torch.Generator().manual_seed(7)
    return {"model": model, "batch": batch,
            "positive": conditioning(net, 1, 1.0), "negative": conditioning(net, 2, 0.5),
            "latent": {"samples": torch.zeros(batch, channels, side, side)},
            "source": 0.5 * torch.randn(batch, channels, side, side, generator=g)}


def run_net(net: Net, cfg: Config, batch: int, log, memory: Memory) -> dict:
    import comfy.model_management
    import torch

    cuda = cfg.device == "cuda"
    t0 = time.perf_counter()
    model, diffusion, params = build_net(net, cfg)

    def context(side):
        return run_context(net, model, batch, side)

    ctx = context(net.latent)
    variants, rows = variants_for(net, ctx, cfg)
    sync_side = min(cfg.sync_latent or net.latent, net.latent)
    sync_variants = variants if sync_side == net.latent else variants_for(net, context(sync_side), cfg)[0]
    gc.collect()
    gc.freeze()  # the imports' and the model's objects: later collections skip them
    log(f"[full-size] {net.name} batch {batch}: {params / 1e6:.0f} M parameters built in "
        f"{time.perf_counter() - t0:.1f} s; variants {', '.join(v.name for v in variants)}")
    counter = ForwardCounter(diffusion)
    score = ScoreTimer(cuda)
    per: dict = {}
    # Untimed: one run of each variant counting host reads (at sync_side), then, where that was a
    # smaller latent, one run of each group's first variant at the timed size (first-use costs:
    # weights to the device, the fingerprint hashes, kernels for these shapes).
    for v in sync_variants:
        syncs = SyncCounter(cuda, diffusion)
        counter.reset()
        with v.context(), syncs.counting():
            t = time.perf_counter()
            v.run(999)
            sync(cuda)
        per[v.name] = {"label": v.label, "pack": v.pack, "group": v.group, "syncs": syncs.summary(cfg.steps),
                       "sync_run_latent": sync_side, "sync_run_seconds": time.perf_counter() - t}
    if sync_side != net.latent:
        for v in {v.group: v for v in reversed(variants)}.values():
            v.run(998)
            sync(cuda)
    log(f"[full-size] {net.name} batch {batch}: warm-up done ({time.perf_counter() - t0:.0f} s)")
    runs: dict = {}
    groups = {}
    for v in variants:
        groups.setdefault(v.group, []).append(v)
    for name, members in groups.items():
        runs.update(time_group(members, cfg.group_rounds.get(name, cfg.rounds), counter, memory, cuda, log, f"{net.name} b{batch} {name}",
                               score))
    cfg_seconds = sum(r["seconds"] for r in runs.get("cfg", []))
    # per-variant figures
    for name, rs in runs.items():
        seconds = [r["seconds"] for r in rs]
        calls = statistics.median(r["forward_calls"] for r in rs)
        rows_ = statistics.median(r["forward_rows"] for r in rs)
        per[name].update({"seconds": seconds, "median_seconds": statistics.median(seconds),
                          "forward_calls": calls, "nfe_per_image": rows_ / batch,
                          "seconds_per_evaluation": statistics.median(seconds) / max(calls, 1),
                          "peak_mib": max(r["peak_mib"] for r in rs), "peak_mib_runs": [r["peak_mib"] for r in rs]})
    result_rows = {}
    targets = []
    for row in rows:
        entry = {"label": row.label, "variant": row.variant, "baseline": row.baseline, **row.extra}
        if row.name == "hallucination_score" and "cfg" in per and "skipped" not in row.extra:
            entry["score_seconds_share_of_cfg_runs"] = score.seconds / cfg_seconds if cfg_seconds else None
            entry["note"] = ("time inside TrajectoryVariance.note/scores during the CFG Guider's timed runs, "
                             "as a share of their wall time")
            if row.variant and row.variant in per:
                entry["time_ratio"] = ratio_stats(per["cfg"]["seconds"], per[row.variant]["seconds"])
                entry["note"] += "; time_ratio: the CFG Guider with the score over the same without it"
                entry["nfe_per_image"] = per["cfg"]["nfe_per_image"]
                entry["peak_mib"] = per["cfg"]["peak_mib"]
                entry["memory_ratio"] = (per["cfg"]["peak_mib"] / per[row.variant]["peak_mib"]
                                         if per[row.variant]["peak_mib"] > 0 else None)
            result_rows[row.name] = entry
            share = entry["score_seconds_share_of_cfg_runs"]
            targets.append({"row": row.name, "target": "the hallucination score's cost reported",
                            "verdict": "reported", "figures": f"{share:.3%} of the CFG Guider's wall time"
                            if share is not None else "not measured"})
            continue
        if row.variant is None or row.variant not in per or "seconds" not in per.get(row.variant, {}):
            entry.setdefault("skipped", "not run")
            result_rows[row.name] = entry
            continue
        v = per[row.variant]
        entry.update({"nfe_per_image": v["nfe_per_image"], "forward_calls": v["forward_calls"],
                      "seconds_per_evaluation": v["seconds_per_evaluation"], "peak_mib": v["peak_mib"],
                      "host_reads_per_step": v["syncs"]["host_reads_per_step"],
                      "pack_host_read_sites": v["syncs"]["pack_host_read_sites"],
                      **({"cuda_syncs_per_step": v["syncs"]["cuda_syncs_per_step"],
                          "pack_cuda_sync_sites": v["syncs"]["pack_cuda_sync_sites"]} if cuda else {})})
        if row.baseline in per and "seconds" in per[row.baseline]:
            b = per[row.baseline]
            entry["baseline_nfe_per_image"] = b["nfe_per_image"]
            entry["baseline_seconds_per_evaluation"] = b["seconds_per_evaluation"]
            entry["baseline_host_reads_per_step"] = b["syncs"]["host_reads_per_step"]
            entry["time_ratio"] = ratio_stats(v["seconds"], b["seconds"])
        if row.name == "agd" and "comfy_cfg_1" in per:
            entry["adapters_share_of_a_forward"] = ratio_stats(v["seconds"], per["comfy_cfg_1"]["seconds"])
            entry["adapters_share_of_a_forward"]["note"] = "AGD run / ComfyUI CFG 1 run, same NFE: 1 + the adapters' share"
            entry["adapter_parameters"] = ctx.get("agd_parameters")
            entry["adapter_share_of_parameters"] = ctx.get("agd_share_of_parameters")
        for target, verdict, figures in judge_row(row, entry, per, cfg, net):
            targets.append({"row": row.name, "target": target, "verdict": verdict, "figures": figures})
        result_rows[row.name] = entry
    counter.handle.remove()
    del model, diffusion, ctx, variants
    gc.unfreeze()
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    gc.collect()
    return {"net": asdict(net) | {"unet": net.unet}, "batch": batch, "parameters": params, "variants": per,
            "rows": result_rows, "targets": targets, "seconds": time.perf_counter() - t0}


def hardware(cfg: Config) -> dict:
    import torch

    info = {"machine": platform.machine(), "processor": _cpu_name(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if cfg.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        text = (HOST_DIR / "comfyui_version.py").read_text() if (HOST_DIR / "comfyui_version.py").exists() else ""
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
        return m.group(1) if m else "unknown"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("cpu", "gpu", "quick", "gpu-dry"), default=None,
                   help="cpu (default), gpu (CUDA, bf16), quick (tiny nets, one round), gpu-dry (the GPU "
                        "configuration's code on tiny nets)")
    p.add_argument("--quick", action="store_true", help="= --config quick")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per group (default: the configuration's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--latent", type=int, default=None, help="latent side for every network (image side / 8)")
    p.add_argument("--nets", nargs="+", default=None, help="only these networks of the configuration")
    p.add_argument("--rows", nargs="+", default=None, choices=ROWS,
                   help="only these rows (the others are reported as skipped)")
    p.add_argument("--batches", nargs="+", type=int, default=None,
                   help="only these batch sizes (e.g. one per command, to fit a device's time limit)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: docs/benchmark/full_size/<config>.json; quick: a temp file)")
    p.add_argument("--page", type=Path, default=None,
                   help="Markdown page for the table (default: docs/performance.md for cpu/gpu; none for quick)")
    p.add_argument("--regenerate", action="store_true", help="rewrite the page's table from the stored JSON")
    args = p.parse_args(argv)
    args.config = "quick" if args.quick else (args.config or "cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_for(args.config)
    stored = args.config in ("cpu", "gpu")
    out = args.out or (RESULTS_DIR / f"{cfg.name}.json" if stored else
                       Path("/tmp") / f"guidance-lab-full-size-{cfg.name}-{os.getpid()}.json")
    page = args.page or (PERFORMANCE_PAGE if stored else None)
    if args.regenerate:
        data = json.loads(out.read_text())
        if page:
            publish(page, data, out.stem)
        if stored:
            publish_readme()
        print(markdown(data))
        return 0
    if cfg.device == "cuda":
        os.environ["GUIDANCE_LAB_DEVICE"] = "gpu"
    from tools.bootstrap import ensure_host_importable, import_pack

    import_pack()
    ensure_host_importable(allow_gpu=cfg.device == "cuda")
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the gpu configuration needs a CUDA GPU; use --config gpu-dry to check its code here")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if args.rounds:
        cfg.rounds, cfg.group_rounds = args.rounds, {}
    if args.steps:
        cfg.steps = args.steps
    if args.latent:
        for net in cfg.nets:
            net.latent = args.latent
    if args.nets:
        cfg.nets = [n for n in cfg.nets if n.name in args.nets]
    if args.rows:
        for net in cfg.nets:
            net.rows = tuple(r for r in net.rows if r in args.rows)
            net.rows_by_batch = {b: tuple(r for r in rows if r in args.rows) for b, rows in net.rows_by_batch.items()}
            net.skip_reason = "not asked for in this run (--rows)"
    if args.batches:
        for net in cfg.nets:
            net.batches = tuple(b for b in net.batches if b in args.batches) or tuple(args.batches)
    memory = Memory(cfg.device)
    started = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = []
    with torch.inference_mode(False), torch.no_grad():
        for net in cfg.nets:
            for batch in net.batches:
                results.append(run_net(net, cfg, batch, log, memory))
    seconds = time.perf_counter() - started
    data = {"meta": {"config": cfg.name, "note": cfg.note, "device": cfg.device, "dtype": cfg.dtype,
                     "steps": cfg.steps, "rounds": cfg.rounds, "group_rounds": cfg.group_rounds,
                     "inversion_cfg": cfg.inversion_cfg, "cfg": CFG,
                     "hardware": hardware(cfg), "comfyui": host_version(), "torch": torch.__version__,
                     "command": "python -m tools.benchmark.full_size " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run_seconds": seconds,
                     "memory_method": memory.method,
                     "sync_method": ("torch.cuda.set_sync_debug_mode('warn') + " if cfg.device == "cuda" else "")
                     + "TorchFunctionMode host reads inside KSAMPLER.sample, warm-up run"},
            "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=float) + "\n")
    table = markdown(data)
    print(table)
    if page:
        publish(page, data, out.stem)
    if stored and out.parent == RESULTS_DIR:
        publish_readme()
    print(f"[full-size] wrote {out}; run time {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
    return 0


# --------------------------------------------------------------------------- the table


def _fmt_ratio(entry: dict, key: str = "time_ratio", digits: int = 3) -> str:
    r = entry.get(key)
    if not r:
        return "-"
    return f"{r['median']:.{digits}f} ({r['iqr'][0]:.{digits}f}-{r['iqr'][1]:.{digits}f})"


def _fmt_share(share) -> str:
    """A share of wall time, readable down to parts per million."""
    if share is None:
        return "not measured"
    return f"{share:.3%}" if share >= 1e-4 else f"{share * 1e6:.1f} ppm"


def _figures(res: dict, t: dict) -> str:
    """A target's figures; the score's share re-rendered from the row (stored strings rounded it to 0)."""
    if t["row"] == "hallucination_score":
        share = res["rows"]["hallucination_score"].get("score_seconds_share_of_cfg_runs")
        return f"{_fmt_share(share)} of the CFG Guider's wall time"
    return t["figures"]


def _fmt_reads(entry: dict) -> str:
    reads = entry.get("host_reads_per_step")
    if reads is None:
        return "-"
    text = f"{reads.get('pack', 0):g} / {reads.get('comfyui', 0):g}"
    cuda = entry.get("cuda_syncs_per_step")
    if cuda is not None:
        text += f" (CUDA syncs {cuda.get('pack', 0):g} / {cuda.get('comfyui', 0):g})"
    return text


def markdown(data: dict) -> str:
    meta = data["meta"]
    hw = meta["hardware"]
    device = hw.get("gpu") or f"{hw['processor']}, {hw['torch_threads']} torch thread(s)"
    lines = [f"Configuration `{meta['config']}`: {device}; ComfyUI {meta['comfyui']}, torch {meta['torch']}, "
             f"{meta['dtype']}, {meta['steps']} steps, {meta['rounds']} rounds; run time "
             f"{meta['run_seconds'] / 60:.1f} min ({meta['date']}). {meta['note']}", ""]
    for res in data["results"]:
        net = res["net"]
        lines += [f"**{net['label']}**, batch {res['batch']} ({res['parameters'] / 1e6:.0f} M parameters)", "",
                  "| row | NFE / image (pack vs stock) | wall time ratio, median (IQR) | s per evaluation "
                  "(pack / stock) | peak MiB (ratio) | host reads per step, pack / ComfyUI |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name in ROWS:
            e = res["rows"].get(name, {})
            if "skipped" in e:
                lines.append(f"| {name} | skipped: {e['skipped']} | | | | |")
                continue
            if name == "hallucination_score":
                share = e.get("score_seconds_share_of_cfg_runs")
                ratio = _fmt_ratio(e, digits=4) if e.get("time_ratio") else "-"
                lines.append(f"| {name} | +0 | score on / off: {ratio} | "
                             f"{_fmt_share(share)} of the CFG runs' time | - | - |" if share is not None
                             else f"| {name} | - | - | - | - | - |")
                continue
            nfe = f"{e.get('nfe_per_image', 0):g} vs {e.get('baseline_nfe_per_image', 0):g}"
            spe = (f"{e['seconds_per_evaluation']:.3g} / {e.get('baseline_seconds_per_evaluation', 0):.3g}"
                   if "seconds_per_evaluation" in e else "-")
            mem = f"{e.get('peak_mib', 0):.0f} ({e['memory_ratio']:.3f})" if e.get("memory_ratio") else \
                f"{e.get('peak_mib', 0):.0f}"
            extra = ""
            if name == "agd" and e.get("adapters_share_of_a_forward"):
                extra = f"; adapters: {_fmt_ratio(e, 'adapters_share_of_a_forward')} of a CFG 1 run"
            lines.append(f"| {name} (vs {e.get('baseline')}) | {nfe} | {_fmt_ratio(e, digits=4)}{extra} | {spe} | "
                         f"{mem} | {_fmt_reads(e)} |")
        lines += ["", "| row | target | verdict | figures |", "|---|---|---|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['row']} | {t['target']} | {t['verdict']} | {_figures(res, t)} |")
        lines.append("")
    return "\n".join(lines)


README_MARKERS = ("<!-- full-size:summary:start -->", "<!-- full-size:summary:end -->")


def stored_runs(results_dir: Path = RESULTS_DIR) -> dict:
    """{file stem: data} of the stored configurations (cpu.json, gpu_*.json), CPU first."""
    files = sorted(results_dir.glob("*.json"), key=lambda f: (f.stem != "cpu", f.stem))
    return {f.stem: json.loads(f.read_text()) for f in files}


def summary_table(results_dir: Path = RESULTS_DIR) -> str:
    """The README's full-size summary: per row, the main target's verdict and figure and the
    memory and host-sync verdicts, one column per network and batch of every stored run."""
    from .report import verdict_cell

    columns, cells = [], {}
    for stem, data in stored_runs(results_dir).items():
        meta = data["meta"]
        where = meta["hardware"].get("gpu") or "CPU"
        for res in data["results"]:
            # The file names the run: two runs of one network at one size are two columns.
            column = (f"{res['net']['label']}, batch {res['batch']}, {meta['steps']} steps ({where}, {meta['dtype']}; "
                      f"`{stem}`)")
            columns.append(column)
            for name in ROWS:
                row = res["rows"].get(name, {})
                if "skipped" in row:
                    cells[(name, column)] = "skipped" if "UNet" not in row["skipped"] else "n/a (UNet only)"
                    continue
                parts, side = [], []
                for t in (t for t in res["targets"] if t["row"] == name):
                    if "memory" in t["target"]:
                        side.append(f"memory {verdict_cell(t['verdict'])}")
                    elif "sync" in t["target"]:
                        side.append(f"syncs {verdict_cell(t['verdict'])}")
                    elif t["verdict"] == "reported":
                        parts.append(_figures(res, t))
                    else:
                        parts.append(f"{verdict_cell(t['verdict'])} ({_short_figure(row, t)})")
                if not parts and row.get("time_ratio"):
                    parts.append(f"{row['time_ratio']['median']:.3f}x")
                cells[(name, column)] = " · ".join(parts + side) or "–"
    if not columns:
        return "No full-size run is stored yet."
    targets = {"cfg": "<= 1.01x CFGGuider", "ksampler_patch": "<= 1.01x KSampler",
               "apg": "vs ComfyUI's APG", "ag": "time saved >= 0.9x NFE saved",
               "linear_ag": "time saved >= 0.9x NFE saved", "cfg_pp": "vs ComfyUI's euler_cfg_pp",
               "agd": "<= 0.55x CFG (GPU, batch 1)", "edict": "<= 2.05x DDIM round trip",
               "bdia": "<= 1.10x DDIM round trip", "o_belm": "<= 1.10x DDIM round trip",
               "hallucination_score": "cost reported"}
    lines = ["| row | target | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name in ROWS:
        lines.append(f"| {name} | {targets[name]} | " + " | ".join(cells.get((name, c), "–") for c in columns) + " |")
    runs = "; ".join(f"`{stem}.json` of {d['meta']['date']}, {d['meta']['steps']} steps, "
                     f"{d['meta']['hardware'].get('gpu') or d['meta']['hardware']['processor']}"
                     for stem, d in stored_runs(results_dir).items())
    lines += ["", f"Every target also holds peak memory to 1.05x ComfyUI's and the pack's host syncs in the step "
              f"loop to zero. Generated from `docs/benchmark/full_size/` ({runs}); every figure, the method and "
              "what the CPU cannot measure: [docs/performance.md](docs/performance.md)."]
    return "\n".join(lines)


def _short_figure(row: dict, target: dict) -> str:
    if "nfe_saved_share" in row:
        return f"{row['time_saved_share']:.1%} of the time saved for {row['nfe_saved_share']:.1%} of the NFE"
    return target["figures"].split(" (")[0]


def publish_readme(readme: Path = README) -> None:
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    text = text[:text.index(start) + len(start)] + "\n" + summary_table() + "\n" + text[text.index(end):]
    readme.write_text(text)


def publish(page: Path, data: dict, key: str) -> None:
    """The table into ``page`` between the markers of ``key`` (the JSON file's stem; appended if absent)."""
    start, end = (m.format(key) for m in PAGE_MARKERS)
    block = f"{start}\n{markdown(data)}\n{end}"
    text = page.read_text() if page.exists() else "# Performance at full size\n\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
