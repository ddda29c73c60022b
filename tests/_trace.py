"""Snapshots of everything a saliency call must leave untouched."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        # in-place writes bump a tensor's version: equal versions = never written, even briefly
        "versions": {n: t._version for n, t in [*model.named_parameters(), *model.named_buffers()]},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "inplace": {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")},
        "hooks": {
            n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                len(m._backward_pre_hooks))
            for n, m in model.named_modules()
        },
        "param_hooks": {n: p._backward_hooks for n, p in model.named_parameters()},
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    for key in ("params", "buffers"):
        for name, value in before[key].items():
            assert torch.equal(value, after[key][name]), f"{key} {name} changed"
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, f".grad of {name} was written"
        else:
            assert torch.equal(grad, after["grads"][name]), f".grad of {name} changed"
    for key in ("requires_grad", "versions", "training", "inplace", "hooks", "param_hooks"):
        assert before[key] == after[key], f"{key} changed"
    assert torch.equal(before["rng"], after["rng"]), "global RNG state advanced"


def assert_same_training(without: tuple, with_monitor: tuple) -> None:
    """Two fits' (model state_dict, optimizer state_dict, RNG state(s)...) are bitwise equal."""
    for name, value in without[0].items():
        assert torch.equal(value, with_monitor[0][name]), name
    for index, state in without[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, with_monitor[1]["state"][index][key]), (index, key)
    for rng, other in zip(without[2:], with_monitor[2:]):
        assert torch.equal(rng, other)
