"""A cheap weights fingerprint, so an artifact is never used with another checkpoint of the same architecture."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def weights_fingerprint(model: PreTrainedModel) -> str:
    """Hash of every parameter's name, shape and first values (rounded to bfloat16 so fp32/bf16 loads agree).

    Cheap (no full pass over the weights) yet different for any two checkpoints that differ in training.
    The same for fp32, bf16 and fp16 loads of a bf16 checkpoint (the usual case); an fp32 checkpoint loaded
    in fp16 rounds twice and gets another fingerprint. Empty when weights are offloaded to disk (meta
    tensors): artifacts are then matched by model id and architecture only.
    """
    params = list(model.named_parameters())
    if any(param.device.type == "meta" for _, param in params):
        return ""
    digest = hashlib.sha256()
    for name, param in params:
        digest.update(f"{name}:{tuple(param.shape)};".encode())
        head = param.detach().flatten()[:16].to("cpu", torch.float32).to(torch.bfloat16)
        digest.update(head.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
