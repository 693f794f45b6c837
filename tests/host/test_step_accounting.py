"""Per-step accounting on the schedule's step for ComfyUI's samplers and the pack's (issue 16,
item 2): an independent counter around the model's forward books each call by its sigma."""

import pytest

from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
from guidance_lab.nodes.cfg import CFGGuiderNode

from .comfy_graph import book_by_sigma, count_model_calls, empty_latent, nfe_by_step, sample, schedule

pytestmark = pytest.mark.host
STEPS = 5
# One and two evaluations per step; two at exactly s_{i+1} (heun), strictly inside the
# interval (dpm_2), at s_{i+1} up to rounding (dpmpp_2s_ancestral at eta 1); uni_pc multistep.
SAMPLERS = ["euler", "heun", "dpm_2", "dpmpp_2s_ancestral", "uni_pc"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cfg_books_every_evaluation_on_its_schedule_step(fixture_model, sampler):
    base, pos, neg = fixture_model
    model, calls = count_model_calls(base)
    guider = CFGGuiderNode.execute(model, pos, neg, 5.0).args[0]
    sample(guider, sampler, STEPS, empty_latent(2), seed=3)
    sigmas = schedule(model, STEPS)
    steps = book_by_sigma(sigmas, [s for s, _ in calls])
    record = guider.last_record
    assert record.nfe_per_step == nfe_by_step(steps, calls, STEPS, 2)
    assert [s.sigma for s in record.steps] == pytest.approx(sigmas[:-1], rel=1e-6)  # each step opens at s_i
    assert record.warnings == []


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_adaptive_guidance_switches_on_the_schedule_step_of_the_crossing_evaluation(fixture_model, sampler):
    base, pos, neg = fixture_model
    model, calls = count_model_calls(base)
    inner = CFGGuiderNode.execute(model, pos, neg, 5.0).args[0]
    probe = AdaptiveGuiderNode.execute(inner, 1.0).args[0]  # never switches: the agreement at each evaluation
    sample(probe, sampler, STEPS, empty_latent(1), seed=3)
    steps = book_by_sigma(schedule(model, STEPS), [s for s, _ in calls])
    gammas = [g for s in probe.last_record.steps for g in s.metrics["cosine"]]
    assert len(gammas) == len(calls)
    # A threshold that the agreement first crosses at evaluation e; for the two-evaluation
    # samplers e is a step's second evaluation, which callback order books on the next step.
    crossings = [e for e in range(1, len(gammas)) if gammas[e] > max(gammas[:e])]
    inner_evals = [e for e in crossings if steps[e] == steps[e - 1]]
    assert inner_evals or sampler in ("euler", "uni_pc")
    e = (inner_evals or crossings)[0]
    threshold = (max(gammas[:e]) + gammas[e]) / 2

    calls.clear()
    ag = AdaptiveGuiderNode.execute(inner, threshold).args[0]
    sample(ag, sampler, STEPS, empty_latent(1), seed=3)
    assert [k for k, (_, size) in enumerate(calls) if size == 2] == list(range(e + 1))
    record = ag.last_record
    assert record.decisions["switch_step"] == [steps[e]]
    assert record.nfe_per_step == nfe_by_step(steps, calls, STEPS, 1)


def run_with_callbacks(guider, sampler, steps: int, latent, seed: int, calls: list) -> list:
    """Sample through ``guider.sample`` and return, per sampler callback, the model calls made by then."""
    from comfy_extras import nodes_custom_sampler as cs

    seen = []
    noise = cs.Noise_RandomNoise(seed).generate_noise(latent)
    sigmas = cs.BasicScheduler.execute(guider.model_patcher, "normal", steps, 1.0).args[0]
    guider.sample(noise, latent["samples"], sampler, sigmas, callback=lambda i, *a: seen.append(len(calls)),
                  disable_pbar=True, seed=seed)
    return seen


def book_by_callbacks(at_callback: list, total_calls: int) -> list:
    """The step of each call by ComfyUI's k-diffusion convention: callback i fires right after
    step i's first model call."""
    firsts = [n - 1 for n in at_callback]
    return [max(i for i, f in enumerate(firsts) if f <= k) for k in range(total_calls)]


def test_every_comfyui_sampler_is_booked_as_it_evaluates(fixture_model):
    """The evaluation plans of nodes/bridge/samplers.py against the callbacks of every sampler
    ComfyUI ships (dpm_fast and dpm_adaptive keep their own schedule)."""
    import comfy.samplers

    base, pos, neg = fixture_model
    model, calls = count_model_calls(base)
    for name in comfy.samplers.SAMPLER_NAMES:
        if name in ("dpm_fast", "dpm_adaptive"):
            continue
        calls.clear()
        guider = CFGGuiderNode.execute(model, pos, neg, 5.0).args[0]
        sampler = comfy.samplers.sampler_object(name)
        at_callback = run_with_callbacks(guider, sampler, 4, empty_latent(1), 5, calls)
        steps = book_by_callbacks(at_callback, len(calls))
        record = guider.last_record
        assert (name, record.warnings) == (name, [])
        assert (name, record.nfe_per_step) == (name, nfe_by_step(steps, calls, 4, 1))


@pytest.mark.parametrize("name,options,family", [
    ("dpmpp_2s_ancestral", {"eta": 5.0}, "eps"),  # steps down to 0: one Euler evaluation
    ("dpm_2_ancestral", {"eta": 0.0}, "eps"),
    ("dpm_2_ancestral", {}, "flow"),  # the RF variants ComfyUI switches to for flow models
    ("dpmpp_2s_ancestral", {}, "flow"),
    ("sa_solver", {"use_pece": True}, "eps"),
    ("sa_solver_pece", {"corrector_order": 0}, "eps"),
    ("heun", {"s_churn": 1.0}, "eps"),  # sigma_hat above s_i
])
def test_sampler_options_and_model_families_change_the_plan_as_they_change_the_sampler(
        fixture_model, name, options, family):
    import comfy.samplers

    from .comfy_graph import with_family

    base, pos, neg = fixture_model
    model, calls = count_model_calls(with_family(base, family))
    guider = CFGGuiderNode.execute(model, pos, neg, 5.0).args[0]
    at_callback = run_with_callbacks(guider, comfy.samplers.ksampler(name, options), 4, empty_latent(1), 5,
                                     calls)
    steps = book_by_callbacks(at_callback, len(calls))
    assert guider.last_record.warnings == []
    assert guider.last_record.nfe_per_step == nfe_by_step(steps, calls, 4, 1)


def test_a_pack_sampler_with_two_evaluations_per_step(fixture_model):
    """The pack's loop with a step that evaluates twice at its own sigma, as EDICT will (it
    denoises two coupled states): the count it declares keys the evaluations."""
    import comfy.samplers

    from guidance_lab.samplers import sampler_function, to_d

    def twice(denoise, x, sigma, sigma_next, state):
        denoised = (denoise(x, sigma) + denoise(x * 1.001, sigma)) / 2
        return x + to_d(x, sigma, denoised) * (sigma_next - sigma), denoised

    twice.evaluations = 2
    base, pos, neg = fixture_model
    model, calls = count_model_calls(base)
    guider = CFGGuiderNode.execute(model, pos, neg, 5.0).args[0]
    sampler = comfy.samplers.KSAMPLER(sampler_function(twice))
    sample(guider, None, STEPS, empty_latent(1), seed=3, sampler=sampler)
    sigmas = schedule(model, STEPS)
    steps = [max(i for i in range(STEPS) if sigmas[i] >= s * (1 - 1e-6)) for s, _ in calls]  # (s_{i+1}, s_i]
    assert steps == [i for i in range(STEPS) for _ in range(2)]
    assert guider.last_record.nfe_per_step == nfe_by_step(steps, calls, STEPS, 1) == [4.0] * STEPS
    assert guider.last_record.warnings == []
