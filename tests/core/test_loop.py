import torch

from guidance_lab.samplers import SAMPLERS, euler, sampler_function, sampling_loop, to_d

from .toy import toy_denoiser


def model(x, sigma, **extra):
    return toy_denoiser(x, sigma, mean=extra.get("mean", 0.0))


def sigmas(n=6):
    return torch.linspace(10.0, 0.0, n)


def test_euler_matches_hand_written_k_diffusion_loop():
    x0 = torch.randn(2, 4, 8, 8) * 10
    s = sigmas()
    x = x0.clone()
    for i in range(len(s) - 1):
        d = (x - model(x, s[i] * torch.ones(2))) / s[i]
        x = x + d * (s[i + 1] - s[i])
    assert torch.equal(SAMPLERS["euler"](model, x0.clone(), s, disable=True), x)


def test_callback_fires_once_per_step_with_k_diffusion_keys():
    seen = []
    SAMPLERS["euler"](model, torch.randn(1, 4, 4, 4), sigmas(5), callback=seen.append, disable=True)
    assert [c["i"] for c in seen] == [0, 1, 2, 3]
    assert set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_extra_args_reach_the_model():
    x = torch.randn(1, 4, 4, 4)
    a = SAMPLERS["euler"](model, x.clone(), sigmas(), extra_args={"mean": 0.0}, disable=True)
    b = SAMPLERS["euler"](model, x.clone(), sigmas(), extra_args={"mean": 3.0}, disable=True)
    assert not torch.equal(a, b)


def test_euler_reaches_the_data_mean_for_gaussian_data():
    # For N(m, 1) data the exact denoiser's ODE ends at the posterior mean direction.
    torch.manual_seed(0)
    out = SAMPLERS["euler"](model, torch.randn(64, 1, 1, 1) * 80, torch.tensor([80.0, 20, 5, 1, 0.1, 0]),
                            extra_args={"mean": 2.0}, disable=True)
    assert abs(out.mean().item() - 2.0) < 0.5


def test_step_state_is_private_to_each_run():
    def counting_step(denoise, x, sigma, sigma_next, state):
        state["n"] = state.get("n", 0) + 1
        return x * 0 + state["n"], x

    fn = sampler_function(counting_step)
    x = torch.zeros(1)
    assert fn(lambda z, s: z, x, sigmas(4), disable=True).item() == 3
    assert fn(lambda z, s: z, x, sigmas(4), disable=True).item() == 3


def test_to_d_is_the_ode_direction():
    x, d0 = torch.tensor([3.0]), torch.tensor([1.0])
    assert to_d(x, torch.tensor(2.0), d0).item() == 1.0
    assert euler(lambda z, s: d0, x, torch.tensor(2.0), torch.tensor(0.0), {})[0].item() == 1.0


def test_sampling_loop_with_no_steps_returns_input():
    x = torch.randn(1, 2)
    assert torch.equal(sampling_loop(euler, model, x, torch.tensor([1.0]), disable=True), x)
