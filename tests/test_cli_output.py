"""What the CLI prints: help with choices, user text never read as markup, progress lines without a terminal."""

from __future__ import annotations

import io
import re
import shutil

import pytest

from headprof.cli import render
from headprof.cli.progress import PlainProgress, bar, status
from headprof.errors import HeadprofError

from helpers import REFERENCE

COMMANDS = [
    ["probes", "build"],
    ["score"],
    ["allocate"],
    ["show"],
    ["check"],
    ["run"],
    ["eval"],
    ["ablate"],
    ["merge"],
    ["import"],
    ["export"],
    ["compare"],
]


def test_no_command_prints_the_help_and_exits_0(cli):
    for args in ([], ["probes"]):
        result = cli(*args)
        assert result.code == 0 and result.stdout.startswith("Usage: headprof") and not result.stderr
    assert "--workdir <dir>" in cli().stdout


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_names_what_every_option_takes(cli, args):
    result = cli(*args, "--help")
    assert result.code == 0 and not result.stderr
    assert "<str>" not in result.stdout and "<bool>" not in result.stdout, result.stdout
    for flag in re.findall(r"^\s+(--json|--help|--eval)\b(.*)$", result.stdout, re.M):
        assert not flag[1].lstrip().startswith("<"), flag  # flags take no value


def test_help_lists_the_choices(cli):
    allocate = cli("allocate", "--help").stdout
    for option in (
        "--policy <headkv|uniform|pyramid|duo|headkv-floor|mix>",
        "--gqa <kv|query>",
        "--score-method <retrieval|r2>",
    ):
        assert option in allocate
    run = cli("run", "--help").stdout
    assert "--method <adakv|full|h2o|headkv|kvzip|pyramidkv|snapkv|streamingllm>" in run
    assert "--pooling <max|avg>" in run and "--device <cpu|cuda|cuda:N|auto>" in run
    assert "--model <alias|hub-id|path>" in run
    assert "--kind <retrieval|reasoning|both>" in cli("probes", "build", "--help").stdout
    assert "{'layer-head': [scores]}" in cli("import", "--help").stdout  # help text is not markup either


@pytest.mark.parametrize("name", ["[scores].safetensors", "[/].safetensors", "[bold]x[/bold].safetensors"])
def test_paths_print_as_given(cli, tmp_path, name):
    missing = cli("show", name, cwd=tmp_path)
    assert missing.code == 1 and missing.stderr == f"error: artifact {name} not found\n"
    (tmp_path / name).parent.mkdir(exist_ok=True)  # "[/].safetensors" is a file in the folder "["
    shutil.copy(REFERENCE / "scores.safetensors", tmp_path / name)
    shown = cli("show", name, "--top", "1")
    assert shown.code == 0 and shown.stdout.startswith(f"{name}: r2 score of"), shown.stdout
    compared = cli("compare", name, name, "--k", "5")  # a table title made of the two paths
    assert compared.code == 0 and compared.stdout.count(name) == 2, compared.stdout


def test_data_prints_as_given(cli, tmp_path, capsys):
    row = (
        '{"id": "[bold]x[/bold]", "kind": "retrieval", "needle": "The code is 7.", "question": "Code?", "answer": "7"}'
    )
    (tmp_path / "n.jsonl").write_text(row + "\n" + row + "\n")
    result = cli("probes", "build", "--needles", "n.jsonl", cwd=tmp_path)
    assert result.code == 1 and "duplicate needle id '[bold]x[/bold]'" in result.stderr
    render.answer("[b]title[/b]", {"answer": "[/] [bold]x[/bold] [scores]", "kv_bytes": 2**20})
    printed = capsys.readouterr().out
    assert "[b]title[/b]" in printed and "[/] [bold]x[/bold] [scores]" in printed and "1.00 MiB" in printed
    render.notice("[red]not red[/red]")
    assert capsys.readouterr().err == "notice: [red]not red[/red]\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_every_tenth_and_after_30_s_without_a_line():
    stream, clock = io.StringIO(), Clock()
    with PlainProgress("scoring m", 20, stream, clock=clock) as progress:
        for _ in range(5):
            clock.now += 2.0
            progress.advance()
        clock.now += 27.0
        progress.tick()  # 29 s since the last line (at 8 s): nothing yet
        clock.now += 1.0
        progress.tick()
        progress.tick()
        for _ in range(15):
            progress.advance()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "scoring m: 2/20 (10%), 0:04 elapsed, eta 0:36"
    assert lines[1] == "scoring m: 4/20 (20%), 0:08 elapsed, eta 0:32"
    assert lines[2] == "scoring m: 5/20 (25%), 0:38 elapsed, eta 1:54"  # the 30 s line
    assert lines[-1] == "scoring m: 20/20 (100%), 0:38 elapsed, eta 0:00"
    assert len(lines) == 3 + 8 and all(
        re.fullmatch(r"scoring m: \d+/20 \(\d+%\), \S+ elapsed, eta \S+", x) for x in lines
    )


def test_plain_progress_of_a_step_without_a_count_is_silent_when_quick():
    stream, clock = io.StringIO(), Clock()
    with PlainProgress("loading m", None, stream, clock=clock) as progress:
        clock.now = 10.0
        progress.tick()
    assert stream.getvalue() == ""
    with PlainProgress("loading m", None, stream, clock=clock) as progress:
        clock.now += 3700.0
        progress.tick()
        clock.now += 5.0
    assert stream.getvalue() == "loading m: 1:01:40 elapsed\nloading m: done in 1:01:45\n"
    failed = io.StringIO()
    with pytest.raises(OSError), PlainProgress("loading m", None, failed, clock=clock) as progress:
        clock.now += 31.0
        progress.tick()
        raise OSError("no weights")
    assert failed.getvalue() == "loading m: 0:31 elapsed\n"  # no "done" before the error line


def test_commands_get_plain_lines_on_a_stream_that_is_not_a_terminal():
    stream = io.StringIO()
    with bar("evaluating", 3, stream=stream) as advance:
        for _ in range(3):
            advance()
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == [
        "evaluating: 1/3 (33%)",
        "evaluating: 2/3 (66%)",
        "evaluating: 3/3 (100%)",
    ]
    with status("loading", stream=stream):
        pass
    assert len(stream.getvalue().splitlines()) == 3


def test_library_errors_name_parameters_and_the_cli_prints_their_flags():
    from headprof.evaluation import EvalConfig

    with pytest.raises(HeadprofError, match="`max_new_tokens` must be at least 1") as caught:
        EvalConfig(("full",), (), max_new_tokens=0).validate()
    assert render.with_flags(str(caught.value)) == "--max-new-tokens must be at least 1"
    with pytest.raises(HeadprofError) as caught:
        EvalConfig(("snapkv",), (64,), window=64).validate()
    assert render.with_flags(str(caught.value)).startswith("every budget must be larger than the window 64")
    with pytest.raises(HeadprofError) as caught:
        EvalConfig(("snapkv",), (), gqa="x").validate()
    assert render.with_flags(str(caught.value)) == "--budgets needs at least one budget"
    # text in backticks that is not a parameter stays as it is
    text = "run `headprof probes build` first; `full` is a method"
    assert render.with_flags(text) == text
