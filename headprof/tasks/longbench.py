"""LongBench v1 (Bai et al. 2024) task rows: each dataset's prompt, answer length and middle truncation.

The tables are LongBench's (THUDM/LongBench @ 2e00731, LongBench/config/dataset2prompt.json and
dataset2maxlen.json; "LB@2e00731" below), and so are the rules of LongBench/pred.py that they feed:
the row's `context` and `input` fill the dataset's template; a prompt over the length limit keeps
its first and last halves (the instructions sit at both ends); the chat template wraps the result,
except for the few-shot and code datasets (trec, triviaqa, samsum, lsht, lcc, repobench-p), which
are plain completions. LongBench-E rows (`hotpotqa_e`, ...) use their base dataset's entries.
The data itself (HF `THUDM/LongBench`) can't be downloaded here; any JSONL in its layout works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_QA_PASSAGES = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
    "\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
    "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)
_QASPER_RULES = (
    "as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered "
    'based on the information in the article, write "unanswerable". If the question is a yes/no question, '
    'answer "yes", "no", or "unanswerable". Do not provide any explanation.'
)
_STORY = (
    "asconcisely as you can, using a single phrase if possible. "  # "asconcisely": LongBench's own typo
    "Do not provide any explanation."
)

# LB@2e00731 LongBench/config/dataset2prompt.json (verbatim).
DATASET_PROMPT: dict[str, str] = {
    "narrativeqa": (
        "You are given a story, which can be either a novel or a movie script, and a question. "
        f"Answer the question {_STORY}\n\nStory: {{context}}\n\nNow, answer the question based on "
        f"the story {_STORY}\n\nQuestion: {{input}}\n\nAnswer:"
    ),
    "qasper": (
        f"You are given a scientific article and a question. Answer the question {_QASPER_RULES}\n\n"
        f"Article: {{context}}\n\n Answer the question based on the above article {_QASPER_RULES}\n\n"
        "Question: {input}\n\nAnswer:"
    ),
    "multifieldqa_en": (
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
        "question based on the above text, only give me the answer and do not output any other "
        "words.\n\nQuestion: {input}\nAnswer:"
    ),
    "multifieldqa_zh": (
        "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，"
        "只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答："
    ),
    "hotpotqa": _QA_PASSAGES,
    "2wikimqa": _QA_PASSAGES,
    "musique": _QA_PASSAGES,
    "dureader": (
        "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答："
    ),
    "gov_report": (
        "You are given a report by a government agency. Write a one-page summary of the report.\n\n"
        "Report:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:"
    ),
    "qmsum": (
        "You are given a meeting transcript and a query containing a question or instruction. Answer the "
        "query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the "
        "above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:"
    ),
    "multi_news": (
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n"
        "{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:"
    ),
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": (
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}"
    ),
    "triviaqa": (
        "Answer the question based on the given passage. Only give me the answer and do not output any "
        "other words. The following are some examples.\n\n{context}\n\n{input}"
    ),
    "samsum": (
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}"
    ),
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": (
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the "
        "final count of unique paragraphs after removing duplicates. The output format should only contain the "
        "number, such as 1, 2, 3, and so on.\n\nThe final answer is: "
    ),
    "passage_retrieval_en": (
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number "
        'of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", '
        '"Paragraph 2", etc.\n\nThe answer is: '
    ),
    "passage_retrieval_zh": (
        "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n"
        '下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，'
        '"段落2"等格式\n\n答案是：'
    ),
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

# LB@2e00731 LongBench/config/dataset2maxlen.json: max_new_tokens per dataset.
DATASET_MAXLEN: dict[str, int] = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "multifieldqa_zh": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "dureader": 128,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "vcsum": 512,
    "trec": 64,
    "triviaqa": 32,
    "samsum": 128,
    "lsht": 64,
    "passage_count": 32,
    "passage_retrieval_en": 32,
    "passage_retrieval_zh": 32,
    "lcc": 64,
    "repobench-p": 64,
}

# LB@2e00731 LongBench/pred.py: "chat models are better off without build prompts on these tasks".
RAW_COMPLETION = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})


def canonical_dataset(name: str) -> str | None:
    """The LongBench dataset a row's `dataset` field names (`hotpotqa_e` -> `hotpotqa`), or None."""
    if name in DATASET_PROMPT:
        return name
    if name.endswith("_e") and name[:-2] in DATASET_PROMPT:
        return name[:-2]
    return None


def split_template(dataset: str, question: str) -> tuple[str, str]:
    """The dataset's prompt around the context: (text before it, text after it, question filled in)."""
    head, tail = DATASET_PROMPT[dataset].split("{context}")
    return head.replace("{input}", question), tail.replace("{input}", question)


def truncate_middle(tokenizer: PreTrainedTokenizerBase, head: str, context: str, tail: str, max_length: int) -> str:
    """The context, shortened so that `head + context + tail` keeps at most `max_length` tokens.

    LB@2e00731 pred.py keeps the first and last `max_length // 2` tokens of the whole prompt. The cut falls
    inside the context whenever head and tail are shorter than half the limit, and the same tokens are cut
    here, from the context alone, so that the context stays one piece of the prompt (a query-agnostic cache
    holds it). Counts use the tokenizer's default special tokens, as LongBench's length check does.
    """
    special = len(tokenizer("")["input_ids"])
    head_n = len(tokenizer(head, add_special_tokens=False)["input_ids"]) + special
    tail_n = len(tokenizer(tail, add_special_tokens=False)["input_ids"])
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    if head_n + len(ids) + tail_n <= max_length:
        return context
    half = max_length // 2
    keep_front, keep_back = max(0, half - head_n), max(0, (max_length - half) - tail_n)
    # Retokenising the joined text can merge across the cut: trim until the whole prompt fits.
    while True:
        text = tokenizer.decode(ids[:keep_front]) + tokenizer.decode(ids[len(ids) - keep_back :] if keep_back else [])
        if len(tokenizer(head + text + tail)["input_ids"]) <= max_length or keep_front + keep_back == 0:
            return text
        keep_front, keep_back = max(0, keep_front - 1), max(0, keep_back - 1)
