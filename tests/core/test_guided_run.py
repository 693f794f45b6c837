import torch

from guidance_lab.guiders import CFGPolicy, GuidedRun, Guided, GuidancePolicy, PolicyRun

from .toy import toy_denoiser


def make_evaluate(run, x, sigma):
    def evaluate(need_uncond):
        run.count_evaluations(x.shape[0] * (2 if need_uncond else 1))
        cond = toy_denoiser(x, sigma, mean=1.0)
        return cond, (toy_denoiser(x, sigma, mean=-1.0) if need_uncond else None)
    return evaluate


def drive(policy, steps=4, batch=3, calls_per_step=1):
    run = GuidedRun(policy, steps, batch)
    x = torch.randn(batch, 4, 8, 8)
    for i in range(steps):
        for _ in range(calls_per_step):
            sigma = torch.full((batch,), 10.0 / (i + 1))
            run.denoise(x, sigma, make_evaluate(run, x, sigma))
        run.step_done(i)
    return run.finish()


def test_cfg_costs_two_nfe_per_image_per_step():
    record = drive(CFGPolicy(7.5), steps=5, batch=3)
    assert record.total_nfe == 30
    assert record.nfe_per_image == 10
    assert record.nfe_per_step == [2.0] * 5
    assert record.uncond_steps == 5


def test_cfg_scale_one_costs_one_nfe_per_image_per_step():
    record = drive(CFGPolicy(1.0), steps=4, batch=2)
    assert record.nfe_per_step == [1.0] * 4
    assert record.uncond_steps == 0


def test_two_evaluations_in_one_step_land_on_that_step():
    record = drive(CFGPolicy(2.0), steps=3, batch=1, calls_per_step=2)
    assert [s.calls for s in record.steps] == [2, 2, 2]
    assert record.nfe_per_step == [4.0, 4.0, 4.0]


def test_record_reads_sigmas_and_metrics_once_at_the_end():
    class Traced(GuidancePolicy):
        name = "traced"

        def start(self, total_steps):
            class Run(PolicyRun):
                def guide(self, cond, uncond, step):
                    return Guided(cond, uncond, {"norm": (cond - uncond).flatten(1).norm(dim=1)})
            return Run()

    record = drive(Traced(), steps=2, batch=2)
    assert [s.sigma for s in record.steps] == [10.0, 5.0]
    assert len(record.steps[0].metrics["norm"]) == 2
    assert record.to_dict()["steps"][1]["metrics"]["norm"][0] > 0


def test_summary_names_policy_and_nfe():
    text = drive(CFGPolicy(7.5), steps=2, batch=1).summary()
    assert "policy: cfg (scale=7.5)" in text and "NFE: 4 total" in text


def test_each_run_gets_fresh_state():
    class Counting(GuidancePolicy):
        name = "counting"

        def start(self, total_steps):
            class Run(PolicyRun):
                calls = 0

                def guide(self, cond, uncond, step):
                    self.calls += 1
                    return Guided(cond, uncond)

                def decisions(self):
                    return {"calls": self.calls}
            return Run()

    policy = Counting()
    assert drive(policy, steps=3).decisions == {"calls": 3}
    assert drive(policy, steps=3).decisions == {"calls": 3}


def test_a_nan_estimate_stops_the_run_naming_the_first_bad_step():
    import pytest

    from guidance_lab.guiders.guided_run import NonFiniteEstimate

    run = GuidedRun(CFGPolicy(5.0), 4, 1)
    x = torch.randn(1, 4, 2, 2)
    for i in range(4):
        def evaluate(need_uncond, i=i):
            cond = torch.full_like(x, float("nan")) if i >= 2 else torch.zeros_like(x)
            return cond, torch.zeros_like(x)
        run.denoise(x, torch.ones(1), evaluate)
        run.step_done(i)
    with pytest.raises(NonFiniteEstimate, match="step 2 of 4") as err:
        run.finish()
    assert err.value.step == 2


def replay(run, events, batch=1):
    """Feed a GuidedRun a sampler's events: "e" one evaluation (CFG, both conditions), an int a callback."""
    x = torch.randn(batch, 4, 2, 2)
    for event in events:
        if event == "e":
            run.denoise(x, torch.ones(batch), make_evaluate(run, x, torch.ones(batch)))
        else:
            run.step_done(event)
    return run.finish()


class SeenSteps(GuidancePolicy):
    """CFG that remembers the step index of every evaluation it guides."""

    name = "seen"

    def __init__(self):
        self.seen = []

    def start(self, total_steps):
        seen = self.seen

        class Run(PolicyRun):
            def guide(self, cond, uncond, step):
                seen.append(step.index)
                return Guided(cond, uncond)
        return Run()


# ComfyUI's heun over 3 steps: the callback fires after each step's first evaluation, the
# corrector follows it; the last step (to sigma 0) is a single Euler evaluation.
HEUN_EVENTS = ["e", 0, "e", "e", 1, "e", "e", 2]


def test_a_plan_keys_each_evaluation_on_its_schedule_step_whatever_the_callback_order():
    policy = SeenSteps()
    record = replay(GuidedRun(policy, 3, 1, plan=[2, 2, 1]), HEUN_EVENTS)
    assert policy.seen == [0, 0, 1, 1, 2]
    assert record.nfe_per_step == [4.0, 4.0, 2.0]
    assert record.warnings == []
    # The pack's loop calls back after the whole step: the same booking.
    pack = SeenSteps()
    assert replay(GuidedRun(pack, 3, 1, plan=[2, 2, 1]), ["e", "e", 0, "e", "e", 1, "e", 2]).warnings == []
    assert pack.seen == [0, 0, 1, 1, 2]


def test_without_a_plan_callbacks_key_and_a_multi_evaluation_step_is_reported():
    record = replay(GuidedRun(CFGPolicy(2.0), 3, 1), HEUN_EVENTS)
    assert record.total_nfe == 10
    assert any("more than once in a step" in w for w in record.warnings)
    assert replay(GuidedRun(CFGPolicy(2.0), 3, 1), ["e", 0, "e", 1, "e", 2]).warnings == []


def test_a_plan_the_sampler_does_not_follow_is_dropped_with_a_warning():
    policy = SeenSteps()
    record = replay(GuidedRun(policy, 3, 1, plan=[1, 1, 1]), HEUN_EVENTS)
    assert any("did not evaluate the model as planned for its step 1" in w for w in record.warnings)
    assert record.total_nfe == 10
    assert policy.seen == [0, 1, 2, 2, 2]  # planned until the check fails, then on the callbacks


def test_the_pack_loop_declares_a_step_s_evaluations_and_the_run_books_them():
    from guidance_lab.samplers import sampler_function, to_d

    from .toy import PolicyModel, ToyPair

    def twice(denoise, x, sigma, sigma_next, state):
        denoised = (denoise(x, sigma) + denoise(x * 1.001, sigma)) / 2
        return x + to_d(x, sigma, denoised) * (sigma_next - sigma), denoised

    twice.evaluations = 2
    sample = sampler_function(twice)
    assert sample.evaluations_per_step == 2 and sampler_function(lambda *a: a).evaluations_per_step == 1
    sigmas = torch.tensor([10.0, 5.0, 2.0, 0.0])
    pair = ToyPair(torch.ones(1, 2, 2, 2), -torch.ones(1, 2, 2, 2))
    model = PolicyModel(CFGPolicy(3.0), pair, 3, plan=[sample.evaluations_per_step] * 3)
    seen = []
    counted = lambda x, sigma, **kw: seen.append(float(sigma[0])) or model(x, sigma, **kw)  # noqa: E731
    sample(counted, torch.randn(1, 2, 2, 2) * 10, sigmas, callback=model.step_done, disable=True)
    record = model.run.finish()
    assert seen == [10.0, 10.0, 5.0, 5.0, 2.0, 2.0]
    assert record.nfe_per_step == [4.0, 4.0, 4.0] and record.warnings == []


class NoReadBack(torch.Tensor):
    """A tensor that fails on any device-to-host read while ``allowed`` is off."""

    allowed = False
    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if not cls.allowed and getattr(func, "__name__", "") in cls.READS:
            raise AssertionError(f"host read in the step loop: {func.__name__}")
        return super().__torch_function__(func, types, args, kwargs or {})


def finish_without_read_back(run: GuidedRun):
    """Drives ``run`` through HEUN_EVENTS on tensors that refuse any host read, then finishes
    it (where reads are allowed) and returns its record."""
    x = torch.randn(2, 4, 2, 2).as_subclass(NoReadBack)
    for event in HEUN_EVENTS:
        if event == "e":
            run.denoise(x, torch.ones(2).as_subclass(NoReadBack), lambda need: (x * 2, x * 3))
            run.count_evaluations(4)
        else:
            run.step_done(event)
    NoReadBack.allowed = True
    try:
        return run.finish()
    finally:
        NoReadBack.allowed = False


def test_a_cfg_run_reads_nothing_back_from_the_device_until_it_finishes():
    run = GuidedRun(CFGPolicy(5.0), 3, 2, plan=[2, 2, 1])
    assert finish_without_read_back(run).nfe_per_step == [4.0, 4.0, 2.0]
