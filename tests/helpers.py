"""What the tests share by import: paths, a stand-in attention module (fixtures live in conftest.py)."""

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NEEDLES = REPO / "headprof" / "data" / "needles"  # packaged needle files
REFERENCE = REPO / "headprof" / "data" / "reference" / "smollm2-135m"  # packaged probes and scores of the model
PUBLISHED = REPO / "tests" / "fixtures" / "published"  # head means derived from ../shared (see its README)
SHARED_PUBLISHED = REPO.parent / "shared" / "fixtures" / "published-head-scores"


class AttentionModule(torch.nn.Module):
    """What a cache layer's attention reads from its module: a stand-in for a decoder layer's attention."""

    num_key_value_groups = 2
    is_causal = True
