"""The Python API says no in its own words: what a compressed cache cannot do is refused with a HeadprofError
naming the parameter, never a raw AttributeError, a silently replaced cache or empty attention tuples."""

from __future__ import annotations

import pytest
import torch

from headprof.errors import HeadprofError
from headprof.runtime import METHODS, BudgetSource, build_press, compressed
from headprof.runtime.methods import parse_options


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


def test_method_options_are_typed_by_their_dataclass_and_scoped_by_method():
    settings = parse_options(["kernel=5", "scale=head-dim", "h2o.decode=evict", "normalize=yes"], ["adakv", "h2o"])
    assert settings == {
        "adakv": {"kernel": 5, "scale": "head-dim", "normalize": True},
        "h2o": {"scale": "head-dim", "decode": "evict"},
    }
    for pairs, message in (
        (["sink=2"], r"unknown method option 'sink' for streamingllm \(sinks\)"),
        (["snapkv.sinks=2"], r"names method 'snapkv'"),
        (["sinks=two"], r"method option sinks takes an int, got 'two'"),
        (["sinks"], r"not key=value"),
    ):
        with pytest.raises(HeadprofError, match=message):
            parse_options(pairs, ["streamingllm"])


def test_one_constructor_builds_every_press(loaded, ids):
    """`compressed` splits its keywords into a `BudgetSource` and the method's options, then builds as
    `build_press` does: StreamingLLM's sink count reaches the cache either way."""
    source = BudgetSource(24, window=4)
    by_source = build_press(loaded.model, "streamingllm", source, options={"sinks": 2}).prefill(ids)
    by_keywords = compressed(loaded.model, "streamingllm", 24, window=4, sinks=2).prefill(ids)
    tokens = ids.shape[1]
    expected = [0, 1, *range(tokens - 22, tokens)]  # the 2 sinks, then the newest B - 2
    for cache in (by_source, by_keywords):
        assert all(p.tolist() == expected for p in cache.kept_positions(0))
    with pytest.raises(HeadprofError, match="options go with a method name"):
        build_press(loaded.model, METHODS["snapkv"](), source, options={"kernel": 5})


def test_cli_method_options_fail_in_one_line_before_the_model_loads(cli, workdir):
    for args, message in (
        (("run", "--method", "streamingllm", "--method-option", "sink=2"), "unknown method option 'sink'"),
        (("run", "--method-option", "kernel=x"), "method option kernel takes an int, got 'x'"),
        (
            ("eval", "--probes", workdir / "p.jsonl", "--methods", "snapkv,h2o", "--method-option", "h2o.decode=later"),
            "unknown h2o decode mode 'later'",
        ),
    ):
        result = cli(*args, "--context", "x", "--question", "y") if args[0] == "run" else cli(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.code != 0 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert message in lines[0], lines[0]
