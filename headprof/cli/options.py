"""Option types shared by the commands. Choices are `str` Enums shown in `--help` as `<a|b|c>`; a value
outside them is one `error:` line naming the choices, a usage error (exit code 2) like typer's own. Every option
that takes free text names what it takes (`<alias|hub-id|path>`, `<int,...>`), never a bare `<str>`."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

from headprof.errors import UsageError
from headprof.runtime.methods import METHODS


class Kind(str, Enum):
    """Which needles a probe set is built from."""

    retrieval = "retrieval"
    reasoning = "reasoning"
    both = "both"


class Split(str, Enum):
    """Which generated evaluation needles: the split to tune on or the one to report on (needlegen.SPLITS)."""

    validation = "validation"
    test = "test"


class ScoreMethods(str, Enum):
    """Which head scores `score` computes (both come from the same captured rows)."""

    retrieval = "retrieval"
    r2 = "r2"
    both = "both"


class ScoreMethod(str, Enum):
    """One head score: Retrieval-head's copy score or HeadKV's retrieval-reasoning score."""

    retrieval = "retrieval"
    r2 = "r2"


class Mode(str, Enum):
    """How answers are produced while scoring: forced gold sentence, or the model's own greedy answer."""

    teacher = "teacher"
    generate = "generate"


class Criterion(str, Enum):
    """When a generated answer counts as right (metrics.CRITERIA)."""

    answer = "answer"
    f1 = "f1"
    recall = "recall"
    f1_answer = "f1-answer"


class Span(str, Enum):
    """Which needle tokens the head scores measure: each score's reference span, the answer, or its sentence."""

    reference = "reference"
    answer = "answer"
    sentence = "sentence"


class Ablation(str, Enum):
    """What a masked head outputs: its mean output over the measured prompts, or zero."""

    mean = "mean"
    zero = "zero"


class Policy(str, Enum):
    """How budgets are distributed over heads."""

    headkv = "headkv"
    uniform = "uniform"
    pyramid = "pyramid"
    duo = "duo"
    headkv_floor = "headkv-floor"
    mix = "mix"


class Rounding(str, Enum):
    """How HeadKV's fractional budgets become whole entries: exact total (largest remainder) or HeadKV's own."""

    largest_remainder = "largest-remainder"
    round = "round"


class Gqa(str, Enum):
    """Budget and cache layout: per KV head (the bytes a GQA model stores) or per query head (HeadKV paper)."""

    kv = "kv"
    query = "query"


class Dtype(str, Enum):
    """Weights' dtype; auto = bfloat16 on CUDA, float32 on CPU."""

    auto = "auto"
    float32 = "float32"
    fp32 = "fp32"
    bfloat16 = "bfloat16"
    bf16 = "bf16"
    float16 = "float16"
    fp16 = "fp16"


class Pooling(str, Enum):
    """Pooling of SnapKV-family scores over neighbouring positions."""

    max = "max"
    avg = "avg"


class Format(str, Enum):
    """Export formats."""

    headkv_json = "headkv-json"


# The registered KV-compression methods, in name order (read from the registry, not imported).
MethodName = Enum("MethodName", {name: name for name in sorted(METHODS)}, type=str)  # type: ignore[misc]


def _parser(choices: type[Enum], message: str) -> Callable[[Any], Enum]:
    """Parse a choice; outside the choices, `message` (with {value} and {choices}) is the error line."""

    def parse(value: Any) -> Enum:
        if isinstance(value, choices):
            return value
        try:
            return choices(value)
        except ValueError:
            names = ", ".join(member.value for member in choices)
            raise UsageError(message.format(value=value, choices=names)) from None

    return parse


def metavar(choices: type[Enum]) -> str:
    """How `--help` shows a choice: `<kv|query>`."""
    return "<" + "|".join(member.value for member in choices) + ">"


def choice(choices: type[Enum], message: str, help: str, *names: str) -> Any:
    """A typer option for a choice enum (`names`: its flags, default from the parameter name)."""
    return typer.Option(*names, help=help, parser=_parser(choices, message), metavar=metavar(choices))


GQA_MESSAGE = "--gqa must be kv or query, got '{value}'"
SCORE_METHOD_MESSAGE = "unknown scoring method '{value}' ({choices})"

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", metavar="<alias|hub-id|path>", help="Alias, hub id, local directory or .gguf file."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DtypeOpt = Annotated[Dtype, choice(Dtype, "unknown dtype '{value}' ({choices})", "auto: bf16 on CUDA, fp32 on CPU.")]
DeviceOpt = Annotated[str, typer.Option(metavar="<cpu|cuda|cuda:N|auto>", help="auto: cuda if present, else cpu.")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map", metavar="<auto|balanced|sequential>", help="Shard a large model over GPUs (accelerate)."
    ),
]
INTS = "<int,...>"  # how `--help` shows comma-separated integers
SplitsOpt = Annotated[int, typer.Option(help="Random needle-balanced splits for the split-half agreement.")]
BootstrapOpt = Annotated[int, typer.Option(help="Needle resamples for the top heads' bootstrap intervals.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the splits and resamples.")]
MethodOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--method-option",
        metavar="<[method.]key=value>",
        help="A method's option, as its options dataclass names it (repeatable; e.g. sinks=2, h2o.decode=evict); "
        "a plain key goes to every method that takes it.",
    ),
]
KernelOpt = Annotated[int, typer.Option(help="Pooling kernel over positions for SnapKV-family scores (odd).")]
PoolingOpt = Annotated[
    Pooling, choice(Pooling, "unknown pooling '{value}' ({choices})", "Pooling of SnapKV-family scores.")
]


def numbers(text: str, what: str, kind: type = int) -> list:
    """Comma-separated numbers (`--lengths 1024,2048`); a malformed entry is a usage error (exit 2)."""
    from headprof import validation

    return validation.int_list(text, what) if kind is int else validation.float_list(text, what)
