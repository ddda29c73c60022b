"""The engine options a fit's model and images need, settled once at fit start.

- A single-logit binary classifier ((B, 1) or (B,) logits trained with binary cross-entropy)
  is explained as two classes: its ``output_to_logits`` is wrapped by
  :func:`~saliency_monitor.engine.model_io.two_class_logits` (logits ``[-z/2, z/2]``, task
  "multiclass", whose loss is the user's BCE); its probes' 0/1 labels are class indices.
- Integer images (uint8 batches a model converts inside ``forward``) reach the engine as they
  are; only hidden layers have maps for them, so layer ``"input"`` is refused here.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from ..engine.compute import SaliencyOptions, check_layers_for_images
from ..engine.model_io import eval_mode, model_logits, two_class_logits


def fit_options(module: nn.Module, sample: Tensor, saliency: SaliencyOptions) -> SaliencyOptions:
    """``saliency`` (layers resolved) for ``module``, checked on ``sample``: probe images as the
    engine gets them (:func:`~saliency_monitor.monitor.probes.probe_chunks`).

    A model returning (B, 1) or (B,) logits (after ``saliency.output_to_logits``) gets
    ``two_class_logits`` around that ``output_to_logits`` (task "multilabel" is refused for it);
    integer images refuse layer ``"input"``; then the model's output must be (B, C >= 2) logits.
    Errors here are raised now, not warned about at every evaluation.
    """
    with torch.no_grad(), eval_mode(module):
        output = module(sample)
        logits = output if saliency.output_to_logits is None else saliency.output_to_logits(output)
    if isinstance(logits, Tensor) and tuple(logits.shape) in ((sample.shape[0], 1), (sample.shape[0],)):
        if saliency.task == "multilabel":
            raise ValueError(
                "Expected task='multiclass' or None for a single-logit binary classifier (its logit z is explained "
                "as two classes [-z/2, z/2], whose softmax cross-entropy is the binary cross-entropy), but got "
                f"task='multilabel' with logits of shape {tuple(logits.shape)}."
            )
        saliency = replace(saliency, output_to_logits=two_class_logits(saliency.output_to_logits))
    check_layers_for_images(sample, saliency.layers or ())
    model_logits(module, sample, saliency.output_to_logits)
    return saliency
