"""Different prompts decoded together: each prompt is prefilled and compressed alone, then all rows decode as one
batch (`Press._prefill_rows`, `CompressedCache.stack_prompts`). Every row's tokens must equal that prompt run
alone (greedy, fp32), with prompts of different lengths and rows that stop at their own EOS."""

from __future__ import annotations

import pytest
import torch

from headprof.errors import HeadprofError
from headprof.runtime import compressed
from headprof.runtime.generation import answer_question, answer_questions, generate_batch

from families import VOCAB, tiny_model, token_ids
from helpers import REFERENCE

PAIRS = [
    ("Paris is the capital of France. " * 2, "What is the capital of France? Answer in one word."),
    (
        "The Tiber river runs through Rome. Rome was founded on seven hills. " * 8,
        "Describe how Rome was founded and which river runs through it, in two sentences.",
    ),
    ("My cat is named Biscuit and sleeps all day.", "What is the cat's name?"),
]


@pytest.fixture(scope="module")
def scores_artifact():
    from headprof.artifacts import load_scores

    return load_scores(REFERENCE / "scores.safetensors")


@pytest.mark.parametrize(
    "method, settings",
    [("full", {}), ("headkv", {"budget": 48, "window": 8, "gqa": "query"})],
)
def test_prompts_decoded_together_equal_each_alone(loaded, scores_artifact, method, settings):
    press = compressed(loaded.model, method, scores=scores_artifact, **settings)
    together = answer_questions(loaded, press, PAIRS, max_new_tokens=20)
    alone = [answer_question(loaded, press, context, question, max_new_tokens=20) for context, question in PAIRS]
    assert [r.answer for r in together] == [r.answer for r in alone]
    assert [r.new_tokens for r in together] == [r.new_tokens for r in alone]
    lengths = [r.new_tokens for r in together]
    assert min(lengths) < 20 and len(set(lengths)) > 1  # one row reached its EOS early, the others went on
    assert len({r.prompt_tokens for r in together}) == len(PAIRS)
    if method != "full":
        assert all(r.compressed for r in together[1:]) and together[1].kv_bytes < together[1].kv_bytes_full


def test_generate_batch_returns_each_prompts_tokens(loaded):
    prompts = [loaded.tokenizer(context + question).input_ids for context, question in PAIRS]
    press = compressed(loaded.model, "pyramidkv", 32, window=8)
    together, decode_s, _ = generate_batch(loaded, press, prompts, max_new_tokens=6)
    # the long prompt is compressed, the two shorter than the budget are kept whole: rows of both kinds in one batch
    assert decode_s > 0 and [s.compressed for s in press.batch_stats] == [False, True, False]
    assert together == [generate_batch(loaded, press, [prompt], 6)[0][0] for prompt in prompts]


@pytest.mark.parametrize("family, gqa", [("qwen2-window", "kv"), ("gemma2", "query"), ("llama", "query")])
def test_left_padded_generate_under_a_press(family, gqa):
    """`model.generate` on a left-padded batch inside `with press:`, sliding-window layers included (a 12-token
    prompt is shorter than the 16-token window: its window is padded, the mask hides it)."""
    model = tiny_model(family)
    prompts = [token_ids(40, seed=1)[0], token_ids(12, seed=2)[0], token_ids(29, seed=3)[0]]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with compressed(model, "snapkv", 20, window=4, gqa=gqa) as press:
        batch = model.generate(ids, attention_mask=mask, **settings)[:, width:]
        assert press.stats.compressed and press.stats.prompt_tokens == sum(len(p) for p in prompts)
        for row, prompt in enumerate(prompts):
            alone = model.generate(
                prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **settings
            )
            assert torch.equal(batch[row], alone[0, len(prompt) :]), row
    assert int(batch.max()) < VOCAB


def test_bad_padded_batches():
    model = tiny_model("llama")
    ids = token_ids(20, batch=2)
    right = torch.ones_like(ids)
    right[1, -3:] = 0
    with compressed(model, "snapkv", 8, window=4), pytest.raises(HeadprofError, match="left-padded"):
        model.generate(ids, attention_mask=right, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with compressed(model, "h2o", 8, window=4, decode="evict"), pytest.raises(HeadprofError, match="one by one"):
        model.generate(ids, attention_mask=right.flip(1), max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_run_answers_several_prompts(cli, tmp_path):
    """`run --questions` (JSONL rows with or without their own context) and `--contexts`: one answer per prompt,
    each the answer `run --question` gives it alone."""
    rows = tmp_path / "questions.jsonl"
    rows.write_text(
        '{"context": "The Tiber river runs through Rome.", "question": "Which river runs through Rome?"}\n'
        '{"question": "What is the capital of France?"}\n'
    )
    shared = ["--context", "Paris is the capital of France.", "--budget", "16", "--window", "4"]
    together = cli("run", "--questions", rows, *shared, "--max-new-tokens", "8", "--json").json()["answers"]
    alone = cli("run", "--question", "What is the capital of France?", *shared, "--max-new-tokens", "8", "--json")
    assert [a["prompt"] for a in together] == ["line 1", "line 2"]
    assert (
        together[1]["answer"] == alone.json()["answer"]
        and together[0]["prompt_tokens"] != alone.json()["prompt_tokens"]
    )
    folder = tmp_path / "contexts"
    folder.mkdir()
    (folder / "b.txt").write_text("My cat is named Biscuit.")
    (folder / "a.txt").write_text("Paris is the capital of France.")
    text = cli("run", "--contexts", folder, "--question", "What is the cat's name?", "--max-new-tokens", "4")
    assert text.code == 0 and text.stdout.index("a.txt:") < text.stdout.index("b.txt:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--questions", "rows.jsonl"], 'line 1: not a JSON object with a "question" string'),
        (["--questions", "lines.txt"], "line 1: no context"),
        (
            ["--questions", "lines.txt", "--question", "y", "--context", "x"],
            "exactly one of --question and --questions",
        ),
        (["--contexts", "empty", "--question", "y"], "no *.txt files"),
    ],
)
def test_bad_prompt_lists(cli, tmp_path, args, message):
    (tmp_path / "rows.jsonl").write_text('["not an object"]\n')
    (tmp_path / "lines.txt").write_text("What is it?\n")
    (tmp_path / "empty").mkdir()
    result = cli("run", *args, cwd=tmp_path)
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
