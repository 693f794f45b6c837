"""LinearAG: a calibration node that records the fit's sums, and the guider that solves them for
its schedule and predicts the unconditional estimate with them."""

from __future__ import annotations

from comfy_api.latest import io

from ..guiders import linear_ag_file
from ..guiders.linear_ag import LinearAGPolicy, evaluated_steps, guided_step_count
from .bridge.calibration import calibrate_linear_ag
from .bridge.files import PackFile, file_stamp, find_file, plan_write, relative_to_output
from .bridge.fingerprint import model_fingerprint
from .guider_common import build_guider, guider_output, model_and_prompt_inputs
from .validation import NodeInputError, checks_inputs

FILE_TOOLTIP = ("Coefficient file, relative to ComfyUI's output folder (the calibration node "
                "saves there) or its input folder, e.g. linear_ag/calibration.safetensors.")
LINEAR_AG_FILE = PackFile(linear_ag_file.FORMAT, "LinearAG calibration",
                          earlier_formats=linear_ag_file.EARLIER_FORMATS)


class LinearAGCalibrateNode(io.ComfyNode):
    DISPLAY = "LinearAG Calibrate (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_LinearAGCalibrate",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            is_output_node=True,
            description="Runs full CFG for a few seeds with this sampler and schedule and saves, for "
                        "the LinearAG Guider, the least-squares sums from which it fits per-step "
                        "coefficients that predict the unconditional estimate from the current "
                        "conditional one and the last real evaluation, for whichever steps it evaluates.",
            inputs=[
                *model_and_prompt_inputs(),
                io.Sampler.Input("sampler", tooltip="The sampler LinearAG will be used with."),
                io.Sigmas.Input("sigmas", tooltip="The schedule LinearAG will be used with (same steps)."),
                io.Latent.Input("latent_image", tooltip="Gives the image size and batch of each calibration run."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale of the calibration runs and of LinearAG later."),
                io.Int.Input("runs", default=4, min=1, max=256,
                             tooltip="How many calibration runs (seeds first_seed, first_seed + 1, ...)."),
                io.Int.Input("first_seed", default=100000, min=0, max=2**63 - 1,
                             tooltip="Seed of the first calibration run; score LinearAG on other seeds."),
                io.Float.Input("ridge", default=1e-4, min=0.0, max=10.0, step=1e-5, round=1e-6,
                               tooltip="Ridge regularisation, relative to the features' scale. 0: plain "
                                       "least squares (minimum-norm where features are collinear)."),
                io.String.Input("filename", default="linear_ag/calibration",
                                tooltip="Where to save, relative to ComfyUI's output folder "
                                        "(.safetensors is added)."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace an existing calibration of this name. Off: an existing "
                                         "one is kept and the new file gets the next free numbered "
                                         "name (calibration_00001.safetensors ...). A file that is not "
                                         "a LinearAG calibration is never replaced."),
            ],
            outputs=[
                io.String.Output(display_name="coefficients_file", tooltip="The saved file, for the LinearAG Guider."),
                io.String.Output(display_name="report",
                                 tooltip="Fit residual per step, each step predicted from the step before."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, sampler, sigmas, latent_image, cfg, runs, first_seed,
                ridge, filename, overwrite=False) -> io.NodeOutput:
        if len(sigmas) < 2:
            raise NodeInputError(cls.DISPLAY, "sigmas", "has no steps; connect a schedule with at least one step")
        # Name and target are settled before the calibration runs are spent.
        target = plan_write(cls.DISPLAY, "filename", filename, LINEAR_AG_FILE, overwrite)
        steps = len(sigmas) - 1
        cal = calibrate_linear_ag(model, positive, negative, sampler, sigmas, latent_image, cfg, runs,
                                  first_seed, ridge, cls.DISPLAY)
        rel = relative_to_output(target.save(lambda tmp: linear_ag_file.save(tmp, cal)))
        report = (f"saved {rel}: {steps} steps, cfg {cfg}, sampler {cal.sampler}, {runs} runs\n"
                  "relative residual per step: " + " ".join(f"{r:.3f}" for r in cal.residuals.tolist()))
        return io.NodeOutput(rel, report)


class LinearAGGuiderNode(io.ComfyNode):
    DISPLAY = "LinearAG Guider (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_LinearAGGuider",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            description="CFG that evaluates the unconditional prompt only at a few steps and "
                        "predicts it elsewhere from calibrated per-step coefficients (LinearAG, "
                        "Castillo et al. 2025). Refuses files made for another model, sampler or schedule.",
            inputs=[
                *model_and_prompt_inputs(),
                io.String.Input("coefficients_file", default="linear_ag/calibration.safetensors",
                                tooltip=FILE_TOOLTIP),
                io.Int.Input("warmup_steps", default=2, min=1, max=1000,
                             tooltip="Evaluate uncond for real at the first steps (step 0 always)."),
                io.Int.Input("evaluate_every", default=5, min=0, max=1000,
                             tooltip="Also evaluate uncond at every n-th step (0: never after warm-up)."),
                io.Float.Input("guidance_end", default=1.0, min=0.05, max=1.0, step=0.05, optional=True,
                               tooltip="Guide only this fraction of the steps (1.0: all). The steps after it "
                                       "are conditional-only: no unconditional evaluation and no estimate, "
                                       "as the paper pairs LinearAG's first half with AG's truncation."),
            ],
            outputs=[guider_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, coefficients_file=None, **_):
        return file_stamp(lambda: find_file(cls.DISPLAY, "coefficients_file", coefficients_file))

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, coefficients_file, warmup_steps, evaluate_every,
                guidance_end=1.0) -> io.NodeOutput:
        path = find_file(cls.DISPLAY, "coefficients_file", coefficients_file)
        try:
            cal = linear_ag_file.load(path)
        except ValueError as err:
            raise NodeInputError(cls.DISPLAY, "coefficients_file", str(err)) from err
        if model_fingerprint(model) != cal.model_fingerprint:
            raise NodeInputError(cls.DISPLAY, "coefficients_file", f"{coefficients_file!r} was calibrated "
                                 "on another model (weights or prediction type differ); calibrate again "
                                 "with this model")
        guided_steps = guided_step_count(cal.steps, float(guidance_end))
        evaluate_at = frozenset(evaluated_steps(cal.steps, int(warmup_steps), int(evaluate_every), guided_steps))
        try:
            coefficients = cal.coefficients(evaluate_at, guided_steps)
        except ValueError as err:
            raise NodeInputError(cls.DISPLAY, "evaluate_every", str(err)) from err

        def fits(sampler, sigmas, options):
            # The model is checked above and wherever the policy meets another MODEL input
            # (guider_common.require_policy_fits); a run checks sampler, schedule and options.
            # It runs when sampling starts, so ComfyUI marks the sampling node: the message
            # names this node and its input, whichever node (Guided Sampler, a KSampler
            # through the Guidance Model Patch) sampled with it.
            reason = cal.mismatch(sampler, sigmas, cal.model_fingerprint, options)
            return reason and (
                f"{cls.DISPLAY}: input 'coefficients_file' ({coefficients_file!r}) does not fit the run "
                f"sampling with this guider (checked as sampling starts): {reason}; sample with the sampler "
                f"(options included) and schedule it was calibrated with, or calibrate again with these")

        def policy():
            return LinearAGPolicy(cal.cfg, coefficients, evaluate_at, fits=fits, guided_steps=guided_steps)

        return io.NodeOutput(build_guider(cls.DISPLAY, model, positive, negative, policy))
