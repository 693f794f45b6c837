"""Small API graphs on the test checkpoint (64 px, 2 steps) and how a prompt failed."""

from __future__ import annotations

import itertools
import json

from tools.host.comfy_server import PromptRejected, execution_error, history_status

SIZE, STEPS = 64, 2
_seeds = itertools.count(1000)


def base_graph(ckpt_name: str) -> dict:
    """Checkpoint, prompts, a CFG Guider ("4") into a Guided Sampler ("9"), its report previewed."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "GuidanceLab_CFGGuider",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 5.0}},
        "5": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "6": {"class_type": "BasicScheduler",
              "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": STEPS, "denoise": 1.0}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "9": {"class_type": "GuidanceLab_GuidedSampler",
              "inputs": {"noise": ["7", 0], "guider": ["4", 0], "sampler": ["5", 0], "sigmas": ["6", 0],
                         "latent_image": ["8", 0]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["9", 2]}},
    }


def calibrate_graph(ckpt_name: str, filename: str, **inputs) -> dict:
    """The base graph plus a LinearAG Calibrate ("16", one run) with its report previewed."""
    graph = base_graph(ckpt_name)
    graph["16"] = {"class_type": "GuidanceLab_LinearAGCalibrate", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "sampler": ["5", 0], "sigmas": ["6", 0],
        "latent_image": ["8", 0], "cfg": 5.0, "runs": 1, "first_seed": next(_seeds), "ridge": 1e-4,
        "filename": filename, **inputs}}
    graph["17"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 1]}}
    return graph


def linear_ag_graph(ckpt_name: str, coefficients_file: str) -> dict:
    """The base graph sampling with a LinearAG Guider ("4") reading ``coefficients_file``."""
    graph = base_graph(ckpt_name)
    graph["4"] = {"class_type": "GuidanceLab_LinearAGGuider", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "coefficients_file": coefficients_file,
        "warmup_steps": 1, "evaluate_every": 0}}
    return graph


def failure(server, graph: dict, timeout: float = 120.0) -> tuple:
    """(node ids, message, rejected) of a prompt that must fail: the ids ComfyUI's validation
    named (rejected: an HTTP 400), or the node whose execution raised and its message."""
    try:
        # A refused prompt ends within milliseconds: poll often, the property test sends hundreds.
        entry = server.run_prompt(graph, timeout=timeout, poll=0.02)
    except PromptRejected as rejected:
        return set(rejected.node_errors), json.dumps(rejected.body), True
    status, _ = history_status(entry)
    if status != "error":
        return set(), f"the prompt did not fail ({status})", False
    error = execution_error(entry)
    return {error["node_id"]}, error["exception_message"], False


def run_ok(server, graph: dict, timeout: float = 300.0) -> dict:
    entry = server.run_prompt(graph, timeout=timeout)
    status, _ = history_status(entry)
    assert status == "success", execution_error(entry)
    return entry


def serves_next(server, ckpt_name: str) -> None:
    """The server is up and runs a new prompt (a fresh seed, so nothing comes from its cache)."""
    assert server.is_alive()
    graph = base_graph(ckpt_name)
    graph["7"]["inputs"]["noise_seed"] = next(_seeds)
    run_ok(server, graph)
