"""EDICT, exact diffusion inversion via coupled transformations (Wallace et al. 2022), in
ComfyUI's sigma space for eps, v-prediction and flow models.

Two sequences x and y are carried together. With the guided ODE direction
``f(z) = (z - D(z, s)) / s`` (the noise estimate for eps/v models, the velocity for flow
models, so one formula serves every family) and ``h = s' - s``, a denoising step s -> s' is

    a' = a + h f(b),   b' = b + h f(a'),              (a, b) = (x, y) or (y, x), see below
    x'' = p x' + (1 - p) y',   y'' = p y' + (1 - p) x''

and every line can be solved for its input, so inversion undoes them in reverse order.

Decisions (algorithms.md, "EDICT"):

- Alternation. The reference alternates which sequence is updated first on every other
  step. Here it is keyed on the step's index k in the schedule (k = 0 the noisiest step),
  which is the same number on the way down and on the way back: x first at even k, y first
  at odd k. Keying on a loop counter instead is exact only for an even number of steps.
- Both model evaluations of a step are at its upper sigma s, as in the paper, so the step
  to sigma 0 never evaluates the model at 0 (no eps there) and inverts like any other step.
- The pair is kept in float64 by default: undoing a mixing layer multiplies the x - y
  difference by 1/p^2, so rounding grows like p^(-2n) over n steps. The pair goes to the
  model wrapper in its own dtype; ComfyUI casts the network's input to the network's dtype
  and forms D = x - sigma * out from the float64 x. Casting the state to float32 *before*
  the wrapper would put float32 rounding of x into f = (x - D) / sigma, divided by a small
  sigma at the last step: where the way back reconstructs a state a hair off (1e-9 relative
  on an ill-conditioned model), its float32 cast flips an ulp and the round trip loses
  ~1e-7 there. Exactness needs the network to be deterministic (same input, same output).
- Only a stateless guidance policy (``GuidancePolicy.is_stateless``: CFG, APG without
  momentum) gives the same function on the way back; others are refused.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .loop import schedule_denoiser

DEFAULT_P = 0.93  # the paper's mixing weight

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Optional[Callable[[int, float, torch.Tensor, torch.Tensor], None]]


def check_mixing_weight(p) -> float:
    """p must lie strictly inside (0, 1): inversion divides by p, and p = 1 never couples x and y."""
    if not (isinstance(p, (int, float)) and 0.0 < float(p) < 1.0):
        raise ValueError(f"the mixing weight p must be strictly between 0 and 1 (the paper uses {DEFAULT_P}), "
                         f"got {p!r}")
    return float(p)


def check_schedule(sigmas: Sequence[float]) -> list:
    """A descending schedule with at least one step; only its last sigma may be 0."""
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2:
        raise ValueError(f"the schedule has {max(len(sigmas) - 1, 0)} steps; EDICT needs at least one "
                         f"(two or more sigmas)")
    if any(b > a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError("the schedule is ascending somewhere; give the descending schedule you sample with "
                         "(e.g. BasicScheduler, not FlipSigmas): inversion walks it backwards itself")
    if any(s <= 0 for s in sigmas[:-1]) or sigmas[-1] < 0:
        raise ValueError("the schedule reaches sigma 0 before its last entry (or goes negative); every step "
                         "but the last needs a positive sigma")
    return sigmas


def check_invertible(policy) -> None:
    """Refuse a guidance policy whose estimate depends on the run's history (EDICT needs a fixed f)."""
    if not getattr(policy, "is_stateless", lambda: False)():
        name = getattr(policy, "name", type(policy).__name__)
        raise ValueError(f"the {name} guidance keeps state across steps (momentum, a switch step or a history), "
                         f"so inverting a run does not meet the same function and the round trip is not exact; "
                         f"use CFG, or APG with momentum 0")


def first_updated(k: int) -> int:
    """Which sequence step k of the schedule updates first: 0 (x) at even k, 1 (y) at odd k."""
    return k % 2


def direction(denoise: Denoise, z: torch.Tensor, sigma: float, model_dtype: torch.dtype) -> torch.Tensor:
    """The guided ODE direction f(z) = (z - D(z, s)) / s (EDICT's eps(z, t) in sigma space)."""
    return (z - denoise(z.to(model_dtype), sigma).to(z.dtype)) / sigma


def coupled_step(denoise: Denoise, x, y, k: int, sigmas: Sequence[float], p: float,
                 model_dtype: torch.dtype) -> "tuple[torch.Tensor, torch.Tensor]":
    """EDICT Sec. 3 denoising step k (sigmas[k] -> sigmas[k+1]): two coupled updates, then the mixing layers."""
    s, h = sigmas[k], sigmas[k + 1] - sigmas[k]
    a, b = (x, y) if first_updated(k) == 0 else (y, x)
    a = a + h * direction(denoise, b, s, model_dtype)
    b = b + h * direction(denoise, a, s, model_dtype)
    x, y = (a, b) if first_updated(k) == 0 else (b, a)
    x = p * x + (1 - p) * y
    y = p * y + (1 - p) * x
    return x, y


def coupled_inverse_step(denoise: Denoise, x, y, k: int, sigmas: Sequence[float], p: float,
                         model_dtype: torch.dtype) -> "tuple[torch.Tensor, torch.Tensor]":
    """EDICT Sec. 3 inversion of step k (sigmas[k+1] -> sigmas[k]): the four lines undone in reverse order."""
    s, h = sigmas[k], sigmas[k + 1] - sigmas[k]
    y = (y - (1 - p) * x) / p
    x = (x - (1 - p) * y) / p
    a, b = (x, y) if first_updated(k) == 0 else (y, x)
    b = b - h * direction(denoise, a, s, model_dtype)
    a = a - h * direction(denoise, b, s, model_dtype)
    return (a, b) if first_updated(k) == 0 else (b, a)


def denoise_pair(denoise: Denoise, x, y, sigmas: Sequence[float], p: float = DEFAULT_P,
                 model_dtype: Optional[torch.dtype] = None, callback: StepCallback = None):
    """EDICT generation: the coupled pair from sigmas[0] down the descending schedule."""
    sigmas, p = check_schedule(sigmas), check_mixing_weight(p)
    model_dtype = model_dtype or x.dtype
    for k in range(len(sigmas) - 1):
        x, y = coupled_step(denoise, x, y, k, sigmas, p, model_dtype)
        if callback is not None:
            callback(k, sigmas[k], x, y)
    return x, y


def invert_pair(denoise: Denoise, x, y, sigmas: Sequence[float], p: float = DEFAULT_P,
                model_dtype: Optional[torch.dtype] = None, callback: StepCallback = None):
    """EDICT inversion: the pair at the end of the descending schedule walked back to sigmas[0]."""
    sigmas, p = check_schedule(sigmas), check_mixing_weight(p)
    model_dtype = model_dtype or x.dtype
    steps = len(sigmas) - 1
    for j in range(steps):
        k = steps - 1 - j  # the step's own index in the schedule, not the loop counter j
        x, y = coupled_inverse_step(denoise, x, y, k, sigmas, p, model_dtype)
        if callback is not None:
            callback(j, sigmas[k + 1], x, y)
    return x, y


def _with_k_callback(denoise: Denoise, callback, dtype) -> "tuple[Denoise, StepCallback]":
    """The denoiser and the k-diffusion per-step callback (the guider keys its steps on it, the
    host previews its "denoised"): x in ``dtype`` and the step's last x0 estimate, which the
    denoiser keeps as it passes it on (the states themselves are still noisy)."""
    if callback is None:
        return denoise, None
    last: list = [None]

    def keeping(z, sigma):
        last[0] = denoise(z, sigma)
        return last[0]

    def report(i, sigma, x, y):
        callback({"x": x.to(dtype), "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": last[0].to(dtype)})

    return keeping, report


def _start_pair(x: torch.Tensor, pair, state_dtype: torch.dtype):
    """The pair to start from, on x's device in the state's dtype: ``pair``, or x twice."""
    if x.device.type == "mps" and state_dtype == torch.float64:
        raise ValueError("this device (MPS) has no float64; choose the float32 state")
    if pair is None:
        start = x.to(state_dtype)
        return start, start.clone()
    return tuple(t.to(device=x.device, dtype=state_dtype) for t in pair)


@torch.no_grad()
def sample_edict(model, x, sigmas, extra_args=None, callback=None, disable=None, pair=None,
                 p: float = DEFAULT_P, state_dtype: torch.dtype = torch.float64, result: Optional[dict] = None,
                 model_dtype: Optional[torch.dtype] = None):
    """k-diffusion-form EDICT generation on descending ``sigmas`` from ``pair`` (default x, x);
    the final pair goes to ``result["pair"]``, x is returned in the input's dtype (``disable``:
    no console bar of its own; the host's callback drives the progress bar)."""
    sigmas_list = sigmas.tolist()
    a, b = _start_pair(x, pair, state_dtype)
    denoise, report = _with_k_callback(schedule_denoiser(model, x, sigmas, extra_args), callback, x.dtype)
    a, b = denoise_pair(denoise, a, b, sigmas_list, p, model_dtype, report)
    if result is not None:
        result["pair"] = (a, b)
    return a.to(x.dtype)


@torch.no_grad()
def sample_edict_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, pair=None,
                           p: float = DEFAULT_P, state_dtype: torch.dtype = torch.float64,
                           result: Optional[dict] = None, model_dtype: Optional[torch.dtype] = None):
    """k-diffusion-form EDICT inversion on ascending ``sigmas`` (the schedule flipped, its 0 kept);
    the pair goes to ``result["pair"]``, x is returned in the input's dtype."""
    schedule = sigmas.flip(0)
    a, b = _start_pair(x, pair, state_dtype)
    denoise, report = _with_k_callback(schedule_denoiser(model, x, sigmas, extra_args), callback, x.dtype)
    a, b = invert_pair(denoise, a, b, schedule.tolist(), p, model_dtype, report)
    if result is not None:
        result["pair"] = (a, b)
    return a.to(x.dtype)


sample_edict.evaluations_per_step = 2
sample_edict_inversion.evaluations_per_step = 2
