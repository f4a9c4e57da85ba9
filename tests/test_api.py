"""The Python API says no in its own words: what a compressed cache cannot do is refused with a HeadprofError
naming the parameter, never a raw AttributeError, a silently replaced cache or empty attention tuples."""

from __future__ import annotations

import pytest
import torch

from headprof.errors import HeadprofError
from headprof.runtime import compressed


@pytest.fixture(scope="module")
def ids(tokenizer):
    text = "The vault code is 4127. " + "Rain fell on the quiet town all day. " * 20 + "What is the vault code?"
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_a_prefilled_cache_outside_its_press_is_refused_in_words(loaded, ids):
    context, question = ids[:, :-8], ids
    press = compressed(loaded.model, "snapkv", 64)
    cache = press.prefill(context)
    with pytest.raises(HeadprofError, match="inside `with press:`"):
        loaded.model.generate(question, cache=cache.fork(), max_new_tokens=2, do_sample=False)
    with torch.no_grad(), pytest.raises(HeadprofError, match="inside `with press:`"):
        loaded.model(input_ids=question[:, -8:], cache=cache.fork(), use_cache=True)
    with press:  # inside, the same cache continues
        loaded.model.generate(question, cache=cache.fork(), max_new_tokens=2, do_sample=False)


def test_what_a_compressed_cache_cannot_honour_is_refused(loaded, ids):
    with compressed(loaded.model, "snapkv", 64):
        with pytest.raises(HeadprofError, match="StaticCache"):
            loaded.model.generate(ids, max_new_tokens=2, do_sample=False, cache_implementation="static")
        with pytest.raises(HeadprofError, match="output_attentions=True"):
            loaded.model.generate(ids, max_new_tokens=2, do_sample=False, output_attentions=True)
        with pytest.raises(HeadprofError, match="another press is already attached"):
            with compressed(loaded.model, "h2o", 96):
                pass
    with compressed(loaded.model, "h2o", 96):  # the first one left: a new one attaches
        pass


def test_api_errors_name_parameters(loaded, tokenizer):
    with pytest.raises(HeadprofError, match=r"tokenizer=") as info:
        compressed(loaded.model, "kvzip", 128)
    with pytest.raises(HeadprofError, match=r"allocation=\) or a score artifact \(scores=\)") as other:
        compressed(loaded.model, "headkv", 128)
    with pytest.raises(HeadprofError, match="unknown gqa layout") as third:
        compressed(loaded.model, "snapkv", 128, gqa="heads")
    assert not any("--" in str(e.value) for e in (info, other, third))
    compressed(loaded.model, "kvzip", 128, tokenizer=tokenizer)  # with its tokenizer: built


def test_compression_ratio_drops_kvpress_share_of_each_prompt(loaded, ids, tokenizer):
    tokens = ids.shape[1]
    for prompt, ratio in ((ids, 0.5), (ids[:, : tokens // 2], 0.25)):
        cache = compressed(loaded.model, "snapkv", compression_ratio=ratio).prefill(prompt)
        kept = {len(p) for p in cache.kept_positions(0)}
        assert kept == {int(prompt.shape[1] * (1 - ratio))}, kept  # kvpress: int(T * (1 - ratio)) kept per head
    with pytest.raises(HeadprofError, match=r"compression_ratio must be in \[0, 1\)"):
        compressed(loaded.model, "snapkv", compression_ratio=1.0)
