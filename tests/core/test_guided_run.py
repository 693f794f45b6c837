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
