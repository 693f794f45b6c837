"""What every policy guider node shares: its model/prompt inputs and the GUIDER it builds."""

from __future__ import annotations

from comfy_api.latest import io

from .bridge.agd import find_adapters
from .bridge.fingerprint import model_fingerprint
from .bridge.policy_guider import PolicyGuider
from ..guiders import GuidancePolicy
from ..guiders.agd import AGDPolicy
from ..guiders.linear_ag import LinearAGPolicy
from .validation import NodeInputError, require_conditioning


def model_and_prompt_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The diffusion model to sample with."),
        io.Conditioning.Input("positive", tooltip="What the image should show (conditional prompt)."),
        io.Conditioning.Input("negative", tooltip="What to steer away from (unconditional / negative prompt)."),
    ]


def cfg_input(default: float = 7.5) -> io.Float.Input:
    return io.Float.Input("cfg", default=default, min=0.0, max=100.0, step=0.1, round=0.01,
                          tooltip="Guidance scale w: 1.0 means no guidance, higher follows the prompt "
                                  "more strongly.")


def guider_output() -> io.Guider.Output:
    return io.Guider.Output(tooltip="Plug into a SamplerCustomAdvanced or Guided Sampler node.")


def build_guider(node: str, model, positive, negative, make_policy) -> PolicyGuider:
    """Check the prompts, build the policy (its ValueErrors name the node), wrap it."""
    require_conditioning(node, "positive", positive)
    require_conditioning(node, "negative", negative)
    try:
        policy: GuidancePolicy = make_policy()
    except ValueError as err:
        raise ValueError(f"{node}: {err}") from err
    guider = PolicyGuider(model, policy, node_name=node)
    guider.set_conds(positive, negative)
    return guider


def require_pack_guider(node: str, input_name: str, guider) -> PolicyGuider:
    if not isinstance(guider, PolicyGuider):
        raise NodeInputError(node, input_name, f"must come from a Guidance Lab guider node, got "
                                               f"{type(guider).__name__}")
    return guider


def _nested(policy: GuidancePolicy):
    """The policy and the policies it wraps (Adaptive Guidance's inner)."""
    while policy is not None:
        yield policy
        policy = getattr(policy, "inner", None)


def require_policy_fits(node: str, input_name: str, guider: PolicyGuider, model) -> GuidancePolicy:
    """The guider's policy, for use on ``model`` (another node's MODEL input), refused where it is
    tied to the guider's own model: LinearAG's coefficients were calibrated on that model, and
    AGD needs the adapters that model carries (on a model without them it would sample with no
    guidance at all)."""
    for policy in _nested(guider.policy):
        if isinstance(policy, AGDPolicy):
            adapters = find_adapters(model)
            if adapters is None:
                raise NodeInputError(node, input_name, "runs AGD, which needs a model with AGD adapters: "
                                     "connect the MODEL from AGD Adapter Loader to 'model'")
            if tuple(adapters.scale_range) != tuple(policy.scale_range):
                raise NodeInputError(node, input_name, f"runs AGD with adapters trained for scales "
                                     f"{list(policy.scale_range)}, but the model's adapters were trained for "
                                     f"{list(adapters.scale_range)}: connect the same adapters to both")
        if isinstance(policy, LinearAGPolicy) and model is not guider.model_patcher \
                and model_fingerprint(model) != model_fingerprint(guider.model_patcher):
            raise NodeInputError(node, input_name, "runs LinearAG with coefficients calibrated on the guider's "
                                 "model, and 'model' is another (weights, patches or prediction type differ): "
                                 "connect the same model to both")
    return guider.policy
