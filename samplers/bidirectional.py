"""Exact inversion at one model evaluation per step: BDIA (Zhang, Lewis and Kleijn 2023,
arXiv 2307.10829) and O-BELM (Wang et al., NeurIPS 2024, arXiv 2410.07273), in ComfyUI's
sigma space for eps, v-prediction and flow models.

Both are "bidirectional explicit" two-step rules: the next state comes from the two most
recent ones and one evaluation at the newer. Number the schedule s_0 > s_1 > ... > s_n
(k = 0 the noisiest, as ComfyUI's sigmas) and the states z_0 ... z_n. With the ODE direction
``f_k = (z_k - D(z_k, s_k)) / s_k`` (the noise estimate for eps/v models, the velocity for
flow models; its Euler step is the DDIM step for both, algorithms.md "Conventions") and the
step sizes ``h_prev = s_k - s_{k-1}``, ``h_next = s_{k+1} - s_k`` (both negative), a
denoising step k >= 1 is

    z_{k+1} = (z_k + h_next f_k) + a_k (z_{k-1} - (z_k - h_prev f_k))                 (B)

the DDIM step to s_{k+1} plus a_k times what z_k's DDIM step back to s_{k-1} missed of the
state actually there. Expanded, z_{k+1} = a z_{k-1} + (1 - a) z_k + (h_next + a h_prev) f_k:

- BDIA: the paper's Eq. (BDIA-DDIM),
  ``x_{i-1} = x_{i+1} - (1 - gamma)(x_{i+1} - x_i) - gamma Delta(t_i -> t_{i+1} | x_i)
  + Delta(t_i -> t_{i-1} | x_i)`` with the paper's i+1, i, i-1 = our k-1, k, k+1, is written
  in the model's own states x = alpha z, where Delta is the DDIM increment. Put z = x / alpha
  in it and the terms in alpha_k z_k cancel: it is (B) with a_k = gamma alpha_{k-1} / alpha_{k+1}
  (BDIA-VP). On eps and v-prediction models alpha = 1 / sqrt(1 + s^2) (ComfyUI's sigma is
  sqrt((1 - abar) / abar)), so a_k = gamma sqrt((1 + s_{k+1}^2) / (1 + s_{k-1}^2)): far below
  gamma at the top of a schedule, where a constant gamma would carry most of a 4481-wide step
  back into the next state (zero terminal SNR) and an edited prompt's change with it. A flow
  model's state already is the paper's variables (alpha = 1 - s), so a_k = gamma there.
  Sign convention: gamma is the weight of the
  older state z_{k-1}, as in the authors' editing code and the BELM repository's BDIA
  sampler (gamma = 0 is DDIM step for step, inversion divides by gamma); the BDIA README's
  formula writes 1 - gamma where the code has gamma. The authors recommend gamma in
  [0.92, 1.0] for editing; their sampling runs (and BELM's BDIA sampler) use 0.5.
- O-BELM: a_k = (h_next / h_prev)^2 in BELM's variables, the one coefficient that makes (B)
  second order (its local truncation error third order; BELM Prop. "O-BELM", the reference's
  ``coef = (delta_2 / delta_1)^2``): Taylor-expanding z(s) about s_k, matching the first
  derivative gives c = h_next + a h_prev and matching the second gives a = h_next^2 / h_prev^2.
  So O-BELM is BDIA with a step-adapted gamma (``Bidirectional.weight``).

Decisions (algorithms.md, "Exact inversion at one evaluation per step"):

- Variables. BELM writes its rule in the reparameterised x/alpha and sigma/alpha. For eps and
  v-prediction models that *is* ComfyUI's state z = x0 + s eps and sigma s, so the rule
  above is the paper's. For flow models (z = (1 - s) x0 + s eps, alpha = 1 - s) the paper's
  variables are xb = z / (1 - s) and sb = s / (1 - s). The DDIM step is the same map in
  both (it recombines the same x0 and eps estimates), so (B) written in xb and sb is (B) on
  the flow state with the weight
      a_k = (hb_next / hb_prev)^2 (1 - s_{k+1}) / (1 - s_{k-1})                        (B-flow)
  (hb: steps of sb): the paper's O-BELM, second order in its variables, run on ComfyUI's
  state, and nothing divides by 1 - s_k of a state. Why not O-BELM in s itself: on the
  uniform schedules flow models use, a_k = 1 there, leapfrog, whose parasitic mode (the
  pair's difference, set off by the first DDIM step) is never damped and is amplified where
  the network is stiff; it cost 29 adherence points at 20 steps on the flow default model.
  In sb the steps shrink towards the data end, a_k < 1 damps that mode (on a uniform s grid,
  shift 1, a_k = (k - 1) / (k + 1)), and the inversion gain stays ~ n^2 / 2. Shifted flow
  schedules (SD3's shift 3) are not uniform in s: some weights there exceed 1 (1.15 at the
  step after the top, 1.02-1.08 over the last five, 20 steps) and are capped like any other.
  At s_{k-1} = 1 (the top of a full flow schedule) sb is infinite and (B-flow) tends to 0, a
  DDIM step that could not be inverted: the one step after the top uses O-BELM's weight in s
  instead. BDIA's Delta is
  the DDIM increment, the same in both variables, and its gamma stays constant on the flow
  state. On eps and v-prediction models gamma weighs the VP states, not ComfyUI's (BDIA-VP
  above): with gamma constant on ComfyUI's state (until 2026-12-07) edits on the v-prediction
  default model landed in 31 % of the tuning pairs at most, the backdrop broken in most; with
  the paper's weight, 75 % (docs/methods/bidirectional.md).
- Zero-stability. Without the model, (B)'s roots are 1 and -a_k: the pair's difference mode is
  multiplied by -a_k per step. O-BELM's weight exceeds 1 wherever the steps grow (the end of the
  normal schedule on SD's discrete sigmas), and there the mode grows into the image; the weight
  is capped at 1 (``O_BELM_MAX_WEIGHT``), leapfrog, the largest weight that does not grow it.
  Steps whose weight is at most 1 keep the paper's; the capped ones are first order. Both
  directions use the capped weight, so the inversion stays exact.
- First step. Only z_0 is known: step 0 is a DDIM step ``z_1 = z_0 + h f_0`` (both papers).
- Inversion. Given (z_{k+1}, z_k), (B) solved for the older state is
  ``z_{k-1} = (z_k - h_prev f_k) + (z_{k+1} - (z_k + h_next f_k)) / a_k``             (B^-1)
  with f_k evaluated at z_k, the same state and sigma as on the way down: exact, one
  evaluation per step. The way up starts from z_n alone, so its first step guesses z_{n-1}
  by DDIM inversion, ``z_{n-1} = z_n + (s_{n-1} - s_n) f(z_n, s_{n-1})`` (f at the first
  positive sigma, never at sigma 0, as samplers/ddim_inversion.py); that guess is only
  the starting point of the way up, and (B^-1) then recovers z_{n-2} ... z_0 so that (B)
  maps (z_0, z_1) back to exactly (z_{n-1}, z_n). "The inverted noise" is therefore the
  pair (z_0, z_1) at (s_0, s_1), and sampling it back runs steps 1 .. n-1 only: n model
  evaluations up, n - 1 down. At least two steps are needed (one step has nothing to undo).
- The step to sigma 0 evaluates at s_{n-1} > 0 like every other step, so it inverts like
  every other step; sigma 0 is never evaluated.
- Rounding. (B) damps the difference mode of the pair by a_k per step and (B^-1) grows it by
  1/a_k: over the way up by prod 1/a_k (``inversion_gain``), i.e. gamma^-(n-1) for BDIA (times
  alpha_{n-1} alpha_n / (alpha_0 alpha_1) on eps / v models, exactly: the product telescopes)
  and about (h_0 / h_{n-1})^2 for O-BELM (eps family; n (n - 1) / 2 on a uniform flow schedule,
  shift 1).
  The round trip undoes it, but the inverted pair carries it, so the pair is kept in float64
  and the nodes refuse settings whose gain would make rounding a visible part of the
  inverted noise. The model runs in its own dtype on the
  float64 state (the wrapper casts; casting before it would put the cast's rounding into
  f, see samplers/edict.py).
- Compensated states. (B) keeps the pair's difference mode alive (factor -a_k per step; BDIA's
  0.96 barely damps it), so plain float64 rounding made at the top of a schedule, where the
  states are ~sigma_max large, reaches the small states at the bottom, where one float32 ulp
  of the network's input is ~1e-7: a 1e-12 mismatch between the way up and the way down then
  casts some element to the other float32 neighbour, and the round trip loses ~1e-5 (seen on
  the v-prediction default model, sigma_max 4519, BDIA at 50 steps, batch 3). So each state is
  an unevaluated sum hi + lo of two numbers of the state's dtype (double-word arithmetic:
  Dekker 1971, Knuth's TwoSum), (B) and (B^-1) are computed in it, and the network sees hi:
  the two ways then agree to ~1e-30 and evaluate the model on the same hi. The inverted pair
  carries both words.
- Every sigma must be below the one before: O-BELM divides by h_prev, and a zero step
  has no direction to extrapolate.
- Exactness needs the same f both ways: a deterministic network and a stateless guidance
  policy (``edict.check_invertible``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from .loop import schedule_denoiser

METHODS = ("bdia", "o_belm")
EDIT_GAMMA = 0.96  # BDIA's authors: gamma in [0.92, 1.0] for round-trip editing
SAMPLING_GAMMA = 0.5  # BDIA's sampling runs and the BELM repository's BDIA sampler
# (B)'s parasitic root is -a_k: a weight above 1 grows the pair's difference mode at every step.
# O-BELM's (h_next / h_prev)^2 exceeds 1 wherever the steps grow, as they do at the end of the
# normal schedule on SD's discrete sigmas (1.08 and 2.7 at the v-prediction default model's
# last steps, 20 steps), and there it cost 19 adherence points at CFG 5 (0.771 against euler's
# 0.965, 144 prompts); capped at 1, where the rule is still zero-stable (leapfrog), 0.93.
# Weights at most 1 (every step of a shift-1 flow schedule in BELM's variables) stay O-BELM's own.
O_BELM_MAX_WEIGHT = 1.0

# The way up's first guess is only a starting point: any value gives an exact round trip. But
# the latent is float32 and the DDIM increment nearly so (D = x - sigma * out with a float32
# out), so their plain sum often sits exactly halfway between two numbers of the network's
# dtype. The way down reproduces the guess only to float64 rounding, grown by the steps' weights
# a_k (O-BELM's reach ~15 at the end of flow schedules), and a model whose network input is the
# raw state (flow models: ComfyUI's calculate_input is the identity) then casts it to the other
# neighbour: one ulp that costs ~1e-6 in the round trip (seen on tiny SD3, Flux and Wan models).
# So the guess is moved to a quarter ulp (of the network's dtype) above the number it rounds to:
# as far from a tie as a value can be, and closer to the guess than its own DDIM error.
OFF_TIE_ULPS = 0.25
# The dtypes a network computes in (fp8 weights are cast up to one of these before use).
_TIE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def off_tie(t: torch.Tensor, network_dtype: torch.dtype) -> torch.Tensor:
    """``t`` moved to a quarter ulp of ``network_dtype`` above its nearest ``network_dtype`` number."""
    if t.dtype == network_dtype or network_dtype not in _TIE_DTYPES:
        return t
    base = t.to(network_dtype)
    ulp = torch.nextafter(base, torch.full_like(base, float("inf"))).to(t.dtype) - base.to(t.dtype)
    return base.to(t.dtype) + OFF_TIE_ULPS * ulp


Denoise = Callable[[torch.Tensor, float], torch.Tensor]


class Words(NamedTuple):
    """A state as the unevaluated sum hi + lo, |lo| <= half an ulp of hi (double-word)."""

    hi: torch.Tensor
    lo: torch.Tensor

    @classmethod
    def of(cls, t: torch.Tensor, lo: Optional[torch.Tensor] = None) -> "Words":
        return cls(t, torch.zeros_like(t) if lo is None else lo.to(t))


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> Words:
    """a + b exactly, as a rounded sum and its error (Knuth's TwoSum)."""
    total = a + b
    b_part = total - a
    return Words(total, (a - (total - b_part)) + (b - b_part))


def _split(t, dtype: torch.dtype):
    """Dekker's split of t into a high and low half (each exact in half the mantissa)."""
    factor = 134217729.0 if dtype == torch.float64 else 4097.0  # 2^ceil(p/2) + 1
    c = factor * t
    high = c - (c - t)
    return high, t - high


def _two_prod(t: torch.Tensor, c: float) -> Words:
    """t * c exactly, as a rounded product and its error (Dekker's TwoProduct)."""
    product = t * c
    t_hi, t_lo = _split(t, t.dtype)
    c_hi, c_lo = _split(torch.tensor(c, dtype=t.dtype), t.dtype)
    return Words(product, ((t_hi * c_hi - product) + t_hi * c_lo + t_lo * c_hi) + t_lo * c_lo)


def _add(x: Words, y: Words) -> Words:
    total = _two_sum(x.hi, y.hi)
    return _two_sum(total.hi, total.lo + (x.lo + y.lo))


def _neg(x: Words) -> Words:
    return Words(-x.hi, -x.lo)


def _scale(x: Words, c: float) -> Words:
    product = _two_prod(x.hi, c)
    return _two_sum(product.hi, product.lo + x.lo * c)


def _divide(x: Words, c: float) -> Words:
    quotient = x.hi / c
    rest = _add(x, _neg(_two_prod(quotient, c)))
    return _two_sum(quotient, (rest.hi + rest.lo) / c)


StepCallback = Optional[Callable[[int, float, torch.Tensor, torch.Tensor], None]]


@dataclass(frozen=True)
class Bidirectional:
    """One of the two rules: ``name`` in METHODS and, for BDIA, its gamma."""

    name: str
    gamma: float = 0.0
    family: str = "eps"  # "eps" (eps and v-prediction) or "flow": O-BELM's weight depends on it

    def weight(self, s_prev: float, s: float, s_next: float) -> float:
        """a_k of (B), the weight of the older state z_{k-1}, for the step s_k -> s_{k+1}."""
        if self.name == "bdia":
            if self.family == "flow":
                return self.gamma  # the flow state is the paper's own variables (alpha = 1 - s)
            # (BDIA-VP): gamma weighs the paper's VP states x = alpha z, alpha = 1 / sqrt(1 + s^2)
            return self.gamma * math.sqrt((1.0 + s_next * s_next) / (1.0 + s_prev * s_prev))
        if self.family == "flow" and s_prev < 1.0:
            def sb(t: float) -> float:
                return t / (1.0 - t)

            # (B-flow): BELM's O-BELM weight in its variables, carried to the flow state
            a = ((sb(s_next) - sb(s)) / (sb(s) - sb(s_prev))) ** 2 * (1.0 - s_next) / (1.0 - s_prev)
        else:
            a = ((s_next - s) / (s - s_prev)) ** 2  # O-BELM's weight (B) in the state's own sigma
        return min(a, O_BELM_MAX_WEIGHT)  # zero-stability (O_BELM_MAX_WEIGHT)

    def settings(self) -> str:
        return f"bdia gamma={self.gamma:g}" if self.name == "bdia" else "o_belm"


def rule_for(name: str, gamma: float = EDIT_GAMMA, invertible: bool = True, family: str = "eps") -> Bidirectional:
    """The rule ``name`` for a model ``family`` with a checked gamma: in (0, 1] where it must
    invert, [0, 1] to sample."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    if family not in ("eps", "flow"):
        raise ValueError(f"unknown model family {family!r}; expected 'eps' or 'flow'")
    if name == "o_belm":
        return Bidirectional(name, family=family)
    low_ok = (lambda g: g > 0.0) if invertible else (lambda g: g >= 0.0)
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and low_ok(float(gamma))
            and float(gamma) <= 1.0):
        bound = "strictly above 0 and at most 1 (inversion divides by it)" if invertible else "between 0 and 1"
        raise ValueError(f"BDIA's gamma must be {bound}; the authors use 0.92-1.0 for editing and 0.5 to "
                         f"sample; got {gamma!r}")
    return Bidirectional(name, float(gamma), family)


def check_schedule(sigmas: Sequence[float], min_steps: int = 2) -> list:
    """A strictly descending schedule of at least ``min_steps`` steps; only its last sigma may be 0."""
    sigmas = [float(s) for s in sigmas]
    steps = max(len(sigmas) - 1, 0)
    if steps < min_steps:
        raise ValueError(f"the schedule has {steps} step(s); BDIA and O-BELM need at least {min_steps} "
                         f"({min_steps + 1} or more sigmas): the first step only starts the pair")
    if any(b > a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError("the schedule is ascending somewhere; give the descending schedule you sample with "
                         "(e.g. BasicScheduler, not FlipSigmas): inversion walks it backwards itself")
    if any(not math.isfinite(s) for s in sigmas) or any(s <= 0 for s in sigmas[:-1]) or sigmas[-1] < 0:
        raise ValueError("the schedule reaches sigma 0 before its last entry, goes negative or is not finite; "
                         "every step but the last needs a positive sigma")
    if any(b == a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError("the schedule repeats a sigma; every step must lower it (O-BELM divides by the "
                         "previous step's size)")
    return sigmas


def inversion_gain(sigmas: Sequence[float], rule: Bidirectional) -> float:
    """prod 1/a_k over steps 1 .. n-1: how much the way up grows the pair's difference mode,
    and with it the rounding carried in the inverted pair."""
    gain = 1.0
    for k in range(1, len(sigmas) - 1):
        gain /= rule.weight(sigmas[k - 1], sigmas[k], sigmas[k + 1])
    return gain


def direction(denoise: Denoise, z: torch.Tensor, sigma: float,
              model_dtype: torch.dtype) -> "tuple[torch.Tensor, torch.Tensor]":
    """(f, D): the ODE direction f = (z - D(z, s)) / s at state z, and the estimate D."""
    denoised = denoise(z.to(model_dtype), sigma).to(z.dtype)
    return (z - denoised) / sigma, denoised


def bidirectional_step(z_prev: Words, z: Words, f: torch.Tensor, a: float, h_prev: float,
                       h_next: float) -> Words:
    """(B): z_{k+1} = (z_k + h_next f_k) + a (z_{k-1} - (z_k - h_prev f_k)), in double words."""
    ddim_next = _add(z, _two_prod(f, h_next))
    missed = _add(z_prev, _neg(_add(z, _neg(_two_prod(f, h_prev)))))
    return _add(ddim_next, _scale(missed, a))


def bidirectional_inverse_step(z_next: Words, z: Words, f: torch.Tensor, a: float, h_prev: float,
                               h_next: float) -> Words:
    """(B^-1): z_{k-1} = (z_k - h_prev f_k) + (z_{k+1} - (z_k + h_next f_k)) / a, in double words."""
    ddim_prev = _add(z, _neg(_two_prod(f, h_prev)))
    missed = _add(z_next, _neg(_add(z, _two_prod(f, h_next))))
    return _add(ddim_prev, _divide(missed, a))


def denoise_states(denoise: Denoise, z, sigmas: Sequence[float], rule: Bidirectional,
                   above: Optional[tuple] = None, model_dtype: Optional[torch.dtype] = None,
                   callback: StepCallback = None) -> "tuple[Words, Words]":
    """Sampling from z (a tensor or Words) at sigmas[0] down the descending schedule; returns
    (z_{n-1}, z_n) as Words.

    ``above``: (state, sigma) one step above sigmas[0], e.g. an inverted pair's upper
    state; then every step is (B). Without it step 0 is the DDIM step that starts the pair.
    """
    z = z if isinstance(z, Words) else Words.of(z)
    model_dtype = model_dtype or z.hi.dtype
    prev = None if above is None else (above[0] if isinstance(above[0], Words) else Words.of(above[0]), above[1])
    for k in range(len(sigmas) - 1):
        s, h_next = sigmas[k], sigmas[k + 1] - sigmas[k]
        f, denoised = direction(denoise, z.hi, s, model_dtype)
        if prev is None:
            z_next = _add(z, _two_prod(f, h_next))  # first step: DDIM
        else:
            z_next = bidirectional_step(prev[0], z, f, rule.weight(prev[1], s, sigmas[k + 1]), s - prev[1], h_next)
        if callback is not None:
            callback(k, s, z.hi, denoised)
        prev, z = (z, s), z_next
    return (prev[0] if prev is not None else z), z


def invert_states(denoise: Denoise, z, sigmas: Sequence[float], rule: Bidirectional,
                  model_dtype: Optional[torch.dtype] = None, callback: StepCallback = None,
                  network_dtype: torch.dtype = torch.float32) -> "tuple[Words, Words]":
    """The way up from z at sigmas[-1] (descending ``sigmas``, >= 2 steps): the pair (z_0, z_1),
    as Words, that ``denoise_states(z_1, sigmas[1:], above=(z_0, sigmas[0]))`` maps back to z.
    ``network_dtype``: what the network's input is cast to, wherever that happens (off_tie)."""
    model_dtype = model_dtype or z.dtype
    n = len(sigmas) - 1
    # Step 0 of the way up: the DDIM-inversion guess of z_{n-1}, f at s_{n-1}, moved off the
    # network dtype's ties (off_tie).
    f, denoised = direction(denoise, z, sigmas[n - 1], model_dtype)
    lower, upper = Words.of(z), Words.of(off_tie(z + (sigmas[n - 1] - sigmas[n]) * f, network_dtype))
    if callback is not None:
        callback(0, sigmas[n], z, denoised)
    for j in range(1, n):
        k = n - j  # undo denoising step k: (z_{k+1}, z_k) -> z_{k-1}
        h_prev, h_next = sigmas[k] - sigmas[k - 1], sigmas[k + 1] - sigmas[k]
        f, denoised = direction(denoise, upper.hi, sigmas[k], model_dtype)
        older = bidirectional_inverse_step(lower, upper, f, rule.weight(*sigmas[k - 1:k + 2]), h_prev, h_next)
        if callback is not None:
            callback(j, sigmas[k], upper.hi, denoised)
        lower, upper = upper, older
    return upper, lower


# -- k-diffusion form (what ComfyUI's KSAMPLER wraps) -------------------------------------------

def _k_callback(callback, dtype):
    if callback is None:
        return None

    def report(i, sigma, z, denoised):
        callback({"x": z.to(dtype), "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised.to(dtype)})

    return report


def _state(t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if like.device.type == "mps" and dtype == torch.float64:
        raise ValueError("this device (MPS) has no float64; choose the float32 state")
    return t.to(device=like.device, dtype=dtype)


@torch.no_grad()
def sample_bidirectional(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         method: str = "o_belm", gamma: float = SAMPLING_GAMMA, above=None,
                         above_sigma: Optional[float] = None, start=None,
                         state_dtype: Optional[torch.dtype] = None, result: Optional[dict] = None,
                         model_dtype: Optional[torch.dtype] = None, above_low=None, start_low=None,
                         family: str = "eps"):
    """k-diffusion-form BDIA / O-BELM sampling on descending ``sigmas`` from x (or ``start``,
    the lower state of an inverted pair, with ``above`` its upper state at ``above_sigma``;
    ``*_low``: their low words). Returns the final state in x's dtype; the final pair goes to
    ``result["pair"]`` (rounded states) and ``result["pair_low"]`` (their low words)."""
    rule = rule_for(method, gamma, invertible=above is not None, family=family)
    state_dtype = state_dtype or (above.dtype if above is not None else x.dtype)
    z = Words.of(_state(x if start is None else start, x, state_dtype),
                 None if start_low is None else _state(start_low, x, state_dtype))
    prev = None if above is None else (Words.of(_state(above, x, state_dtype),
                                                None if above_low is None else _state(above_low, x, state_dtype)),
                                       float(above_sigma))
    schedule = check_schedule(sigmas.tolist(), min_steps=1)  # the one read of the schedule
    denoise = schedule_denoiser(model, x, sigmas, extra_args)
    pair = denoise_states(denoise, z, schedule, rule, prev, model_dtype, _k_callback(callback, x.dtype))
    if result is not None:
        result["pair"], result["pair_low"] = tuple(w.hi for w in pair), tuple(w.lo for w in pair)
    return pair[1].hi.to(x.dtype)


@torch.no_grad()
def sample_bidirectional_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                   method: str = "o_belm", gamma: float = EDIT_GAMMA,
                                   state_dtype: torch.dtype = torch.float64, result: Optional[dict] = None,
                                   model_dtype: Optional[torch.dtype] = None,
                                   network_dtype: torch.dtype = torch.float32, family: str = "eps"):
    """k-diffusion-form inversion on ascending ``sigmas`` (the schedule flipped, its 0 kept);
    the pair (z_0, z_1) goes to ``result["pair"]`` (rounded) and ``result["pair_low"]`` (low
    words), z_0 is returned in x's dtype."""
    rule = rule_for(method, gamma, family=family)
    schedule = check_schedule(sigmas.flip(0).tolist())
    denoise = schedule_denoiser(model, x, sigmas, extra_args)
    pair = invert_states(denoise, _state(x, x, state_dtype), schedule, rule, model_dtype,
                         _k_callback(callback, x.dtype), network_dtype)
    if result is not None:
        result["pair"], result["pair_low"] = tuple(w.hi for w in pair), tuple(w.lo for w in pair)
    return pair[0].hi.to(x.dtype)


def sample_o_belm(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """O-BELM sampling from noise (the SAMPLER the pack's sampler nodes offer)."""
    return sample_bidirectional(model, x, sigmas, extra_args, callback, disable, method="o_belm", **options)


def sample_bdia(model, x, sigmas, extra_args=None, callback=None, disable=None, gamma: float = SAMPLING_GAMMA,
                **options):
    """BDIA-DDIM sampling from noise at ``gamma`` (0 is DDIM)."""
    return sample_bidirectional(model, x, sigmas, extra_args, callback, disable, method="bdia", gamma=gamma,
                                **options)


def sampling_schedule_problem(sigmas: torch.Tensor) -> Optional[str]:
    """Why the plain samplers cannot walk ``sigmas`` (check_schedule's reason), or None; read
    before the run, so the host can name the node."""
    try:
        check_schedule(sigmas.tolist(), min_steps=1)
    except ValueError as problem:
        return str(problem)
    return None


for _fn in (sample_bidirectional, sample_bidirectional_inversion, sample_o_belm, sample_bdia):
    _fn.evaluations_per_step = 1
for _fn in (sample_bidirectional, sample_o_belm, sample_bdia):
    _fn.schedule_problem = sampling_schedule_problem
