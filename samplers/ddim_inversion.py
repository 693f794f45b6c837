"""DDIM inversion, the usual approximate inversion (Song et al. 2021; the baseline EDICT is
measured against), in sigma space for every model family.

The Euler/DDIM step s -> s' (descending) is ``x' = x + (s' - s) f(x, s)`` with
``f(z, s) = (z - D(z, s)) / s``. Inverting it exactly would need f at the unknown x; DDIM
inversion takes it at the known x' instead, at the same sigma s the denoising step uses
(diffusers' DDIMInverseScheduler and null-text inversion do the same). So the step up from
sigma 0 evaluates the model at the first positive sigma, never at 0, and the only error is
the state mismatch x' vs x (it grows with the step size and the guidance scale).
"""

from __future__ import annotations

from .euler import to_d
from .loop import require_ascending


def ddim_inversion(denoise, x, sigma, sigma_next, state):
    """DDIM Eq. 13 run backwards (ascending sigmas): x' = x + (s' - s) f(x, s'), f at the target sigma."""
    if state.get("i") == 0:  # the schedule is on the host already (the loop's state)
        require_ascending(state["sigmas"], "ddim_inversion")
    denoised = denoise(x, sigma_next)
    return x + to_d(x, sigma_next, denoised) * (sigma_next - sigma), denoised
