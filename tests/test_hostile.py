"""Hostile and careless input, case by case (issue 15): one `error:` line, the right exit code, no traceback,
inputs unchanged byte for byte, nothing written (no output, no temp file, no lock) anywhere in the folder or
outside it, no code of a model run. No case loads a model: every check fires before.

Each row of CASES is one case of the red-team list, tagged with its class. A case is a command line (with
`{name}` placeholders for the sandbox's files) and optionally a setup that writes a hostile file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headprof import __version__, fileio, validation
from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import load_scores, save_alloc, save_scores
from headprof.errors import HeadprofError, HeadprofWarning
from headprof.models.spec import resolve_model, slugify

from helpers import NEEDLES, REFERENCE

SCORES = REFERENCE / "scores.safetensors"


# ---------------------------------------------------------------- the sandbox


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Valid inputs built once without a model: scores, two probes, needles, an allocation, an exported JSON."""
    root = tmp_path_factory.mktemp("originals")
    shutil.copy(SCORES, root / "s.safetensors")
    lines = (REFERENCE / "probes.jsonl").read_text().splitlines()
    (root / "p.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (root / "n.jsonl").write_text("\n".join((NEEDLES / "needles-retrieval.jsonl").read_text().splitlines()[:2]) + "\n")
    art = load_scores(root / "s.safetensors")
    save_alloc(root / "a.safetensors", allocate_artifact(art, AllocConfig(128, gqa="kv"), "r2", root / "s.safetensors"))
    from headprof.interop import export_scores

    export_scores(art, root / "s.json", "r2")
    (root / "task.jsonl").write_text(json.dumps({"context": "Some text. " * 40, "input": "What?", "answers": ["x"]}))
    return root


@pytest.fixture
def sandbox(originals, tmp_path, monkeypatch):
    """A fresh copy of the inputs in an empty folder; the workspace points inside it."""
    box = tmp_path / "box"
    shutil.copytree(originals, box)
    monkeypatch.setenv("HEADPROF_WORKDIR", str(box / "ws"))
    return box


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


# ---------------------------------------------------------------- hostile files


def forge_scores(path: Path, tensors: Callable | None = None, meta: Callable | None = None) -> None:
    """Rewrite a score artifact's tensors or header directly (no validation), as a hostile file would be."""
    data = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        header = json.loads(fh.metadata()["headprof"])
    if tensors:
        tensors(data)
    if meta:
        meta(header)
    save_file({k: v.contiguous() for k, v in data.items()}, str(path), metadata={"headprof": json.dumps(header)})


def forge_alloc(path: Path, budgets: Callable | None = None, meta: Callable | None = None) -> None:
    data = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        header = json.loads(fh.metadata()["headprof"])
    if budgets:
        data["budgets"] = budgets(data["budgets"])
        header["total"] = int(data["budgets"].sum()) if data["budgets"].dtype != torch.bool else 0
    if meta:
        meta(header)
    save_file(data, str(path), metadata={"headprof": json.dumps(header)})


def edit_probe(box: Path, change: Callable[[dict], None], name: str = "p.jsonl") -> None:
    rows = [json.loads(line) for line in (box / name).read_text().splitlines()]
    change(rows[0])
    (box / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _set(key, value):
    return lambda row: row.__setitem__(key, value)


def remove_needle(row: dict) -> None:
    start, end = row["needle_chars"]
    row["prompt"] = row["prompt"][:start] + "x" * (end - start) + row["prompt"][end:]


def span_on_template(row: dict) -> None:
    row["target"] = row["prompt"][0:12]
    row["answer"] = row["target"][2:8]
    row["sentence_chars"] = row["needle_chars"] = [0, 12]
    row["answer_chars"] = [2, 8]


def nan_in_one_probe(data):
    data["per_probe.r2"][3, 0, 0] = float("nan")


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(box: Path) -> None:
        target = box / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text, encoding="utf-8", errors="surrogatepass")

    return setup


def scores_json(box: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((box / "s.json").read_text())
    change(data)
    (box / "s.json").write_text(json.dumps(data))


def json_text(box: Path, old: str, new: str) -> None:
    text = (box / "s.json").read_text()
    (box / "s.json").write_text(text.replace(old, new, 1))


def first_score(raw: str) -> Callable[[Path], None]:
    """Replace head 0-0's first score by `raw` JSON text (a number Python's json would turn into inf)."""

    def setup(box: Path) -> None:
        data = json.loads((box / "s.json").read_text())
        data["0-0"][0] = "MARK"
        (box / "s.json").write_text(json.dumps(data).replace('"MARK"', raw))

    return setup


def evil_model(box: Path) -> None:
    """A model folder whose config maps the model class to its own code, which would leave a marker."""
    folder = box / "evil"
    folder.mkdir()
    config = {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "evil.Model", "AutoConfig": "evil.Cfg"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(box / 'PWNED')!r}, 'w').write('ran')\n")


def fake_gguf(box: Path) -> None:
    (box / "...gguf").write_bytes(b"GGUF not really")


def one_needle_scores(box: Path) -> None:
    def meta(header):
        header["probe_ids"] = ["same@1@1"] * len(header["probe_ids"])

    forge_scores(box / "s.safetensors", meta=meta)


def other_architecture(box: Path) -> None:
    forge_scores(box / "o.safetensors" if (box / "o.safetensors").exists() else _copy(box), meta=_arch)


def _copy(box: Path) -> Path:
    shutil.copy(box / "s.safetensors", box / "o.safetensors")
    return box / "o.safetensors"


def _arch(header):
    header["model"]["head_dim"] = 32  # another architecture with the same tensor shapes


def huge_shard(box: Path) -> None:
    def meta(header):
        header["probe_set_size"] = 10**9

    forge_scores(box / "s.safetensors", meta=meta)


ALLOCATE = ["allocate", "--scores", "s.safetensors", "--budget", "128"]
RUN_ALLOC = ["run", "--alloc", "a.safetensors", "--context", "x", "--question", "y"]

# (class, args, exit code, fragment of the error line, setup)
CASES = [
    # markup in user text: printed literally, never parsed (these were tracebacks)
    ("markup", ["score", "--probes", "x[/]y.jsonl"], 1, "probe file x[/]y.jsonl not found", None),
    (
        "markup",
        ["import", "s.json"],
        1,
        "key '[/]' is not",
        lambda b: scores_json(b, lambda d: d.__setitem__("[/]", d.pop("0-0"))),
    ),
    (
        "markup",
        ["score", "--probes", "p.jsonl"],
        1,
        "must be [start, end] inside the prompt",
        lambda b: edit_probe(b, _set("sentence_chars", [5, 3])),
    ),
    ("markup", ["show", "[bold]x[/].safetensors"], 1, "artifact [bold]x[/].safetensors not found", None),
    ("markup", ["probes", "build", "--needles", "[red]n[/red].jsonl"], 1, "needle file [red]n[/red].jsonl", None),
    # an output that is an input, a directory or a device (these overwrote inputs)
    (
        "data loss",
        [*ALLOCATE, "--out", "s.safetensors"],
        1,
        "also an input",
        None,
    ),
    (
        "data loss",
        [*ALLOCATE, "--out", "./x/../s.safetensors"],
        1,
        "also an input",
        lambda b: (b / "x").mkdir(),
    ),
    ("data loss", ["show", "s.safetensors", "--png", "s.safetensors"], 1, "also an input", None),
    ("data loss", ["export", "s.safetensors", "--out", "s.safetensors"], 1, "also an input", None),
    ("data loss", ["score", "--probes", "p.jsonl", "--out", "p.jsonl"], 1, "also an input", None),
    ("data loss", ["probes", "build", "--needles", "n.jsonl", "--out", "n.jsonl"], 1, "also an input", None),
    ("data loss", ["eval", "--probes", "p.jsonl", "--report", "p.jsonl"], 1, "also an input", None),
    (
        "data loss",
        ["eval", "--probes", "p.jsonl", "--cache", "s.safetensors", "--scores", "s.safetensors"],
        1,
        "also an input",
        None,
    ),
    ("data loss", ["eval", "--probes", "p.jsonl", "--report", "r.json", "--cache", "r.json"], 1, "same file", None),
    ("data loss", ["merge", "s.safetensors", "--out", "s.safetensors"], 1, "also an input", None),
    ("data loss", ["import", "s.json", "--model", "llama3-8b", "--out", "s.json"], 1, "also an input", None),
    ("data loss", ["export", "s.safetensors", "--out", "/dev/full"], 1, "not a regular file", None),
    ("data loss", ["eval", "--task", "task.jsonl", "--report", "task.jsonl"], 1, "also an input", None),
    ("data loss", ["eval", "--task", "task.jsonl", "--cache", "./task.jsonl"], 1, "also an input", None),
    (
        "data loss",
        ["eval", "--task", "ruler:niah_single_2", "--haystack", "h.txt", "--report", "h.txt"],
        1,
        "also an input",
        write("h.txt", "An essay sentence of some length. " * 40),
    ),
    (
        "data loss",
        ["tasks", "build", "ruler:niah_single_2", "--haystack", "h.txt", "--out", "h.txt"],
        1,
        "also an input",
        write("h.txt", "An essay sentence of some length. " * 40),
    ),
    ("data loss", ["tasks", "build", "ruler:vt", "--out", "/dev/null"], 1, "not a regular file", None),
    ("data loss", ["tasks", "build", "ruler:vt", "--out", "d"], 1, "is a directory", lambda b: (b / "d").mkdir()),
    ("data loss", ["export", "s.safetensors", "--out", "/dev/null"], 1, "not a regular file", None),
    (
        "data loss",
        [*ALLOCATE, "--out", "d"],
        1,
        "is a directory",
        lambda b: (b / "d").mkdir(),
    ),
    # a model's own code: refused before transformers could ask
    ("code", ["import", "s.json", "--model", "evil"], 1, "ships its own Python code", evil_model),
    ("code", ["probes", "build", "--model", "evil"], 1, "trust_remote_code=False", evil_model),
    ("code", ["score", "--model", "evil", "--probes", "p.jsonl"], 1, "ships its own Python code", evil_model),
    # names that would leave the workspace
    ("outside", ["import", "s.json", "--model", "./...gguf"], 1, "cannot", fake_gguf),
    ("outside", ["import", "s.json", "--model", "a/.."], 1, "unknown model 'a/..'", None),
    ("outside", ["import", "s.json", "--model", "../x"], 1, "unknown model", None),
    # accepted before, giving wrong results
    (
        "wrong result",
        [*ALLOCATE, "--out", "o.st"],
        1,
        "non-finite values",
        lambda b: forge_scores(b / "s.safetensors", nan_in_one_probe),
    ),
    (
        "wrong result",
        [*ALLOCATE, "--temp", "nan", "--out", "o.st"],
        1,
        "temp must be a finite number",
        None,
    ),
    (
        "wrong result",
        [*ALLOCATE, "--temp", "1e6", "--out", "o.st"],
        1,
        "overflows",
        None,
    ),
    (
        "wrong result",
        RUN_ALLOC,
        1,
        "below the window",
        lambda b: forge_alloc(b / "a.safetensors", lambda t: torch.zeros_like(t)),
    ),
    (
        "wrong result",
        RUN_ALLOC,
        1,
        "below the window",
        lambda b: forge_alloc(b / "a.safetensors", lambda t: t - 100),
    ),
    (
        "wrong result",
        RUN_ALLOC,
        1,
        "window 100000",
        lambda b: forge_alloc(b / "a.safetensors", meta=lambda h: h.__setitem__("window", 100000)),
    ),
    (
        "wrong result",
        RUN_ALLOC,
        1,
        "window",
        lambda b: forge_alloc(b / "a.safetensors", meta=lambda h: h.__setitem__("window", -3)),
    ),
    ("wrong result", ["run", "--budget", "0", "--context", "x", "--question", "y"], 1, "budget 0 must be larger", None),
    ("wrong result", ["run", "--window", "0", "--context", "x", "--question", "y"], 1, "window must be at least", None),
    (
        "wrong result",
        ["score", "--probes", "p.jsonl"],
        1,
        "needle text changed or removed",
        lambda b: edit_probe(b, remove_needle),
    ),
    (
        "wrong result",
        ["score", "--probes", "p.jsonl"],
        1,
        "field 'depth'",
        lambda b: edit_probe(b, _set("depth", "deep")),
    ),
    ("wrong result", ["score", "--probes", "p.jsonl"], 1, "n_tokens", lambda b: edit_probe(b, _set("n_tokens", -7))),
    ("wrong result", ["score", "--probes", "p.jsonl"], 1, "templated", lambda b: edit_probe(b, _set("templated", 1))),
    (
        "wrong result",
        ["score", "--probes", "p.jsonl"],
        1,
        "missing field",
        lambda b: edit_probe(b, lambda r: r.pop("seed")),
    ),
    ("wrong result", ["score", "--probes", "p.jsonl"], 1, "'depth'", lambda b: edit_probe(b, _set("depth", 1e999))),
    (
        "wrong result",
        ["import", "s.json"],
        1,
        "key '00-00'",
        lambda b: scores_json(b, lambda d: d.__setitem__("00-00", d.pop("0-0"))),
    ),
    ("wrong result", ["import", "s.json"], 1, "float32 range", first_score("1.7e308")),
    ("wrong result", ["import", "s.json"], 1, "overflows", first_score("1e999")),
    ("wrong result", ["import", "s.json"], 1, "appears twice", lambda b: json_text(b, "{", '{"0-0": [1.0], ')),
    ("wrong result", ["eval", "--probes", "p.jsonl", "--methods", "snapkv,snapkv"], 1, "lists snapkv twice", None),
    ("wrong result", ["eval", "--probes", "p.jsonl", "--budgets", "64,64"], 1, "lists 64 twice", None),
    ("wrong result", ["eval", "--probes", "p.jsonl", "--probes", "./p.jsonl"], 1, "twice", None),
    (
        "wrong result",
        ["eval", "--probes", "p.jsonl", "--probes", "q.jsonl"],
        1,
        "more than one --probes file",
        lambda b: shutil.copy(b / "p.jsonl", b / "q.jsonl"),
    ),
    (
        "wrong result",
        ["eval", "--task", "t.jsonl"],
        1,
        "'input' must be",
        write("t.jsonl", json.dumps({"context": "c", "input": None, "answers": ["a"]})),
    ),
    (
        "wrong result",
        ["eval", "--task", "t.jsonl"],
        1,
        "'answers' must be",
        write("t.jsonl", json.dumps({"context": "c", "input": "q", "answers": {}})),
    ),
    (
        "wrong result",
        ["eval", "--task", "t.jsonl"],
        1,
        "'answers' must be",
        write("t.jsonl", json.dumps({"context": "c", "input": "q", "answers": [None]})),
    ),
    ("wrong result", ["merge", "s.safetensors", "s.safetensors", "--out", "m.st"], 1, "PART lists", None),
    (
        "wrong result",
        ["eval", "--task", "t.jsonl"],
        1,
        "row id a twice",
        write("t.jsonl", 2 * (json.dumps({"_id": "a", "context": "c", "input": "q", "answers": ["x"]}) + "\n")),
    ),
    (
        "internal",
        ["eval", "--task", "t.jsonl"],
        1,
        "lone surrogate",
        write("t.jsonl", '{"context": "c\\ud800", "input": "q", "answers": ["x"]}'),
    ),
    ("internal", ["eval", "--task", "t.jsonl"], 1, "nested too deeply", write("t.jsonl", deep_json(100000))),
    # internal errors before
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "expected floating-point",
        lambda b: forge_scores(b / "s.safetensors", lambda d: d.__setitem__("per_probe.r2", d["per_probe.r2"].long())),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "expected floating-point",
        lambda b: forge_scores(b / "s.safetensors", lambda d: d.__setitem__("per_probe.r2", d["per_probe.r2"] > 0)),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "non-finite",
        lambda b: forge_scores(b / "s.safetensors", lambda d: d["per_probe.r2"].__setitem__((0, 0, 0), float("inf"))),
    ),
    (
        "internal",
        ["show", "s.safetensors", "--json"],
        1,
        "non-finite",
        lambda b: forge_scores(b / "s.safetensors", nan_in_one_probe),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "counted",
        lambda b: forge_scores(b / "s.safetensors", lambda d: d.__setitem__("counted", d["counted"].long() * 7)),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "probe_ids must be a list",
        lambda b: forge_scores(b / "s.safetensors", meta=lambda h: h.__setitem__("probe_ids", "abc")),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "probe_kinds has",
        lambda b: forge_scores(b / "s.safetensors", meta=lambda h: h.__setitem__("probe_kinds", ["retrieval"])),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "model n_layers",
        lambda b: forge_scores(b / "s.safetensors", meta=lambda h: h["model"].__setitem__("n_layers", "30")),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "model description",
        lambda b: forge_scores(b / "s.safetensors", meta=lambda h: h.__setitem__("model", [1, 2])),
    ),
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "no headprof metadata",
        lambda b: save_file({"x": torch.zeros(1)}, str(b / "s.safetensors"), metadata={"headprof": deep_json(100000)}),
    ),
    ("internal", ["import", "s.json"], 1, "nested too deeply", write("s.json", deep_json(100000))),
    ("internal", ["import", "s.json"], 1, "float32 range", first_score("1" + "0" * 400)),
    ("internal", ["import", "s.json"], 1, "not valid JSON", first_score("1" + "0" * 5000)),
    ("internal", ["import", "s.json"], 1, "not a number JSON allows", first_score("NaN")),
    ("internal", ["import", "s.json"], 1, "not a number JSON allows", first_score("-Infinity")),
    ("internal", ["import", "s.json"], 1, "non-numeric", first_score("true")),
    ("internal", ["import", "s.json"], 1, "key '\\ud800'", lambda b: json_text(b, '"0-0"', '"\\ud800"')),
    ("internal", ["import", "s.json"], 1, "not valid JSON", write("s.json", b'{"\xff": 1}')),
    (
        "internal",
        ["score", "--probes", "p.jsonl"],
        1,
        "lone surrogate",
        lambda b: edit_probe(b, _set("question", "\ud800?")),
    ),
    ("internal", ["score", "--probes", "p.jsonl"], 1, "not UTF-8", write("p.jsonl", b"\xff\xfe{}\n")),
    ("internal", ["score", "--probes", "p.jsonl"], 1, "corrupt", write("p.jsonl", deep_json(100000) + "\n")),
    ("internal", ["run", "--context", "x", "--question", "\udcff?"], 1, "--question contains bytes", None),
    (
        "internal",
        [*ALLOCATE, "--beta", "nan", "--out", "o.st"],
        1,
        "beta must be a finite",
        None,
    ),
    (
        "internal",
        [*ALLOCATE, "--beta", "inf", "--out", "o.st"],
        1,
        "beta must be a finite",
        None,
    ),
    (
        "internal",
        RUN_ALLOC,
        1,
        "integer budgets",
        lambda b: forge_alloc(b / "a.safetensors", lambda t: t.float()),
    ),
    (
        "internal",
        RUN_ALLOC,
        1,
        "shape",
        lambda b: forge_alloc(b / "a.safetensors", lambda t: t[:3]),
    ),
    (
        "internal",
        ["show", "a.safetensors"],
        1,
        "below the window",
        lambda b: forge_alloc(b / "a.safetensors", lambda t: -t),
    ),
    ("internal", ["merge", "s.safetensors", "--out", "m.st"], 1, "of a set of 1000000000", huge_shard),
    (
        "internal",
        ["merge", "s.safetensors", "--out", "m.st"],
        1,
        "probe_indices",
        lambda b: forge_scores(
            b / "s.safetensors", meta=lambda h: h.__setitem__("probe_indices", [10**12] * len(h["probe_ids"]))
        ),
    ),
    ("internal", ["show", "s.safetensors", "--top", "0"], 1, "--top must be at least 1", None),
    # late failures: now before any model loads
    ("late", ["score", "--probes", "p.jsonl", "--out", "d"], 1, "is a directory", lambda b: (b / "d").mkdir()),
    ("late", ["score", "--probes", "p.jsonl", "--out", "f/s.st"], 1, "not writable", write("f", "x")),
    ("late", ["eval", "--probes", "p.jsonl", "--report", "f/r.json"], 1, "not writable", write("f", "x")),
    ("late", ["eval", "--probes", "p.jsonl", "--cache", "f/c.jsonl"], 1, "not writable", write("f", "x")),
    (
        "late",
        ["eval", "--probes", "p.jsonl", "--png", "p-needles.png"],
        1,
        "",
        lambda b: (b / "p-needles-needles.png").mkdir(),
    ),
    (
        "late",
        ["ablate", "--scores", "s.safetensors", "--probes", "p.jsonl", "--compare", "o.safetensors"],
        1,
        "comparison artifact",
        other_architecture,
    ),
    # one needle: no split halves (reported as such); needles shared with the scores are refused before loading
    ("late", ["ablate", "--scores", "s.safetensors", "--probes", "p.jsonl"], 1, "share 1 needle", one_needle_scores),
    ("late", ["probes", "build", "--lengths", "-5"], 1, "must be positive", None),
    ("late", ["tasks", "build", "ruler:vt", "--out", "f/t.jsonl"], 1, "not writable", write("f", "x")),
    ("late", ["eval", "--task", "ruler:vt", "--lengths", "10000000"], 1, "exceeds the model's context window", None),
    ("late", ["eval", "--task", "ruler:vt", "--lengths", "0"], 1, "--lengths must be positive", None),
    ("late", ["eval", "--task", "ruler:vt", "--lengths", "512,512"], 1, "repeated --lengths", None),
    ("late", ["eval", "--task", "ruler:vt", "--samples", "0"], 1, "--samples must be at least 1", None),
    ("late", ["eval", "--task", "ruler:niah_single_2", "--haystack", "none.txt"], 1, "haystack none.txt not", None),
    ("late", ["tasks", "build", "ruler:niah_single_2", "--haystack", "none.txt"], 1, "haystack none.txt not", None),
    ("late", ["eval", "--task", "ruler:qa_1"], 1, "not available offline", None),
    ("late", ["eval", "--task", "task.jsonl", "--max-length", "0"], 1, "--max-length must be", None),
    ("late", ["probes", "build", "--depths", "150"], 1, "percent", None),
    # malformed values headprof parses itself: exit 2, like typer's usage errors
    ("usage", ["probes", "build", "--lengths", "abc"], 2, "Invalid value for '--lengths'", None),
    ("usage", ["probes", "build", "--lengths", "1e3"], 2, "Invalid value for '--lengths'", None),
    ("usage", ["probes", "build", "--depths", "ten"], 2, "Invalid value for '--depths'", None),
    ("usage", ["probes", "build", "--depths", "nan"], 1, "--depths must be a finite number", None),
    ("usage", ["eval", "--probes", "p.jsonl", "--budgets", "64.5"], 2, "Invalid value for '--budgets'", None),
    ("usage", ["compare", "s.safetensors", "s.safetensors", "--k", "abc"], 2, "Invalid value for '--k'", None),
    ("usage", ["score", "--probes", "p.jsonl", "--shard", "0/2/3"], 2, "Invalid value for '--shard'", None),
    ("usage", ["score", "--probes", "p.jsonl", "--shard", "a/b"], 2, "Invalid value for '--shard'", None),
    ("usage", ["ablate", "--scores", "s.safetensors", "--probes", "p.jsonl", "--top", "inf%"], 2, "--top", None),
    ("usage", ["ablate", "--scores", "s.safetensors", "--probes", "p.jsonl", "--top", "abc"], 2, "--top", None),
    ("usage", ["allocate", "--budget", "many"], 2, "Invalid value for '--budget'", None),
    ("usage", ["eval", "--task", "ruler:vt", "--lengths", "abc"], 2, "Invalid value for '--lengths'", None),
    ("usage", ["eval", "--task", "ruler:vt", "--lengths", "1e3"], 2, "Invalid value for '--lengths'", None),
    ("usage", ["eval", "--task", "ruler:vt", "--samples", "two"], 2, "Invalid value for '--samples'", None),
    ("usage", ["eval", "--task", "task.jsonl", "--max-length", "1.5"], 2, "Invalid value for '--max-length'", None),
    ("usage", ["tasks", "build", "ruler:vt", "--lengths", "1k"], 2, "Invalid value for '--lengths'", None),
]


def _id(case) -> str:
    return f"{case[0]}: {' '.join(case[1])}"[:90]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_hostile_input_is_one_clean_error(case, cli, sandbox, monkeypatch):
    _kind, args, code, fragment, setup = case
    if any("gguf" in a for a in args):  # its dequantization key goes to a cache of its own, not the shared one
        monkeypatch.setenv("HEADPROF_CACHE", str(sandbox / "cache"))
    if setup:
        setup(sandbox)
    before = _snapshot(sandbox)
    siblings = set(os.listdir(sandbox.parent))
    result = cli(*args, cwd=sandbox)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.code == code, result.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr + result.stdout and "internal error" not in errors[0]
    after = _snapshot(sandbox)
    created = {k for k in after if k not in before and not k.startswith("cache")}
    assert after.items() >= {k: v for k, v in before.items()}.items(), "an input changed"
    assert not created, f"files created: {created}"
    assert not [k for k in after if k.endswith((".tmp", ".lock"))]
    assert set(os.listdir(sandbox.parent)) == siblings, "a file was created outside the folder"
    assert not (sandbox / "PWNED").exists()


def test_case_classes_cover_the_issue():
    """The record the report counts from: every class of the red-team list has cases here."""
    counts: dict[str, int] = {}
    for kind, *_ in CASES:
        counts[kind] = counts.get(kind, 0) + 1
    assert set(counts) == {"markup", "data loss", "code", "outside", "wrong result", "internal", "late", "usage"}


# ---------------------------------------------------------------- hostile but valid: handled correctly


def test_markup_in_paths_and_data_prints_literally(cli, sandbox):
    (sandbox / "d[").mkdir()
    result = cli("allocate", "--scores", "s.safetensors", "--budget", "128", "--out", "d[/]a.st", cwd=sandbox)
    assert result.code == 0, result.stderr
    assert "wrote d[/]a.st" in result.stdout and (sandbox / "d[" / "]a.st").is_file()
    (sandbox / "[b]x[").mkdir()
    shutil.copy(sandbox / "s.safetensors", sandbox / "[b]x[/b].safetensors")
    shown = cli("show", "[b]x[/b].safetensors", "--top", "2")
    assert shown.code == 0 and "[b]x[/b].safetensors" in shown.stdout, shown.stderr


def test_json_output_is_strict_nan_becomes_null_with_a_notice(cli, sandbox):
    forge_scores(sandbox / "s.safetensors", lambda d: d["per_probe.r2"].zero_())  # constant: Spearman is NaN
    result = cli("compare", "s.safetensors", "s.safetensors", "--json", "--k", "5", cwd=sandbox)
    assert result.code == 0, result.stderr
    payload = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json"))
    assert payload["spearman"] is None and "notice: not a finite number, written as null: spearman" in result.stderr
    exported = cli("export", "s.safetensors", "--out", "e.json")
    assert exported.code == 0 and "NaN" not in (sandbox / "e.json").read_text()


def test_artifact_folder_of_any_model_name_stays_inside_the_workspace(sandbox, monkeypatch):
    from headprof import workspace

    fake_gguf(sandbox)
    monkeypatch.chdir(sandbox)
    spec = resolve_model("./...gguf")
    assert spec.slug == "model" and workspace.model_dir("./...gguf").parent == sandbox / "ws"
    for name in ("..", "...", ".", "a/..", "x/../..", "\\..\\", ".hidden", "a b/c"):
        slug = slugify(name)
        assert slug not in ("", ".", "..") and "/" not in slug and not slug.startswith(".")


# ---------------------------------------------------------------- files: modes, orphans, locks, checkpoints


def test_outputs_respect_the_umask_and_orphan_temp_files_are_removed(sandbox, monkeypatch):
    target = sandbox / "out.safetensors"
    orphan = sandbox / f".{target.name}.99999999.abc.tmp"  # a killed run's temp file (no such pid)
    orphan.write_text("half")
    live = sandbox / f".{target.name}.{os.getpid()}.live.tmp"  # this process's own: not touched
    live.write_text("mine")
    old = os.umask(0o022)
    try:
        save_scores(target, load_scores(sandbox / "s.safetensors"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not orphan.exists() and live.exists()


def test_atomic_writer_refuses_special_files():
    with pytest.raises(HeadprofError, match="not a regular file"):
        with fileio.atomic_path("/dev/null"):
            pass


def test_a_second_writer_to_the_same_output_is_refused(cli, sandbox):
    target = sandbox / "s2.safetensors"
    with fileio.exclusive(f"{target}.partial", "the scores"):
        result = cli("score", "--probes", "p.jsonl", "--out", target, cwd=sandbox)
    assert result.code == 1 and f"another headprof run (pid {os.getpid()}) is writing" in result.stderr
    assert not Path(f"{target}.partial.lock").exists()  # released and removed by the holder


def test_a_checkpoint_of_another_run_is_set_aside(sandbox):
    from headprof.probes import load_probes
    from headprof.scoring import ScoreConfig, _load_checkpoint

    probes = load_probes(sandbox / "p.jsonl")
    art = load_scores(SCORES).subset([0, 1])
    art.meta.update(run_key="k", complete=False, version=__version__)
    ckpt = sandbox / "c.partial"
    save_scores(ckpt, art)
    config = ScoreConfig()
    assert len(_load_checkpoint(ckpt, "k", probes, config)) == 2  # this run: resumed
    with pytest.warns(HeadprofWarning, match="another run"):
        assert _load_checkpoint(ckpt, "other", probes, config) == {}
    art.meta["version"] = "0.0.0"  # the same key written by another version
    save_scores(ckpt, art)
    with pytest.warns(HeadprofWarning, match="another run"):
        assert _load_checkpoint(ckpt, "k", probes, config) == {}
    art = load_scores(SCORES).subset([1, 0])  # rows of the set, at the wrong positions
    art.meta.update(run_key="k", complete=False, version=__version__, probe_indices=[0, 1])
    save_scores(ckpt, art)
    with pytest.warns(HeadprofWarning, match="another run"):
        assert _load_checkpoint(ckpt, "k", probes, config) == {}


@pytest.mark.parametrize(
    ("command", "kept"), [("score", "checkpointed"), ("eval", "results cache"), ("allocate", "nothing was written")]
)
def test_ctrl_c_message_is_the_commands_own(cli, sandbox, monkeypatch, command, kept):
    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("headprof.artifacts.load_scores", interrupt)
    args = {
        "score": ["score", "--probes", "p.jsonl", "--out", "x.st", "--shard", "0/1"],
        "eval": ["eval", "--probes", "p.jsonl", "--scores", "s.safetensors"],
        "allocate": ["allocate", "--scores", "s.safetensors", "--budget", "128"],
    }[command]
    if command == "score":
        monkeypatch.setattr("headprof.probes.load_probes", interrupt)
    result = cli(*args, cwd=sandbox)
    assert result.code == 130 and "interrupted: " in result.stderr and kept in result.stderr, result.stderr


# ---------------------------------------------------------------- models


def test_remote_code_is_refused_and_never_run(sandbox):
    evil_model(sandbox)
    with pytest.raises(HeadprofError, match="ships its own Python code"):
        resolve_model(str(sandbox / "evil"))
    assert not (sandbox / "PWNED").exists()


def test_every_transformers_loader_call_says_trust_remote_code_false():
    import re

    root = Path(__file__).resolve().parents[1] / "headprof"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for call in re.finditer(
            r"(AutoTokenizer|AutoConfig|AutoModelForCausalLM)\.from_pretrained\((.*?)\)\n", text, re.S
        ):
            assert "trust_remote_code=False" in call[2], f"{path}: {call[0][:80]}"
        for call in re.finditer(r"from_pretrained\((Auto\w+)\.from_pretrained, (.*?)\)\n", text, re.S):
            assert "trust_remote_code=False" in call[0] or "**kwargs" in call[0], f"{path}: {call[0][:80]}"


def test_read_only_model_cache_falls_back_to_memory(sandbox, monkeypatch):
    from headprof.models.gguf import cache_writable, local_weights

    (sandbox / "ro").write_text("a file, so nothing can be created under it, even by root")
    monkeypatch.setenv("HEADPROF_CACHE", str(sandbox / "ro" / "cache"))
    assert not cache_writable(sandbox / "ro" / "cache" / "models")
    with pytest.warns(HeadprofWarning, match="not writable: dequantizing .* in memory"):
        weights = local_weights(resolve_model("smollm2-135m"))
    assert weights.kwargs == {"gguf_file": resolve_model("smollm2-135m").gguf_file}


# ---------------------------------------------------------------- validation units


def test_output_checks_compare_files_not_spellings(tmp_path):
    (tmp_path / "a").write_text("x")
    os.symlink(tmp_path / "a", tmp_path / "link")
    with pytest.raises(HeadprofError, match="also an input"):
        validation.check_output(tmp_path / "link", [tmp_path / "a"])
    with pytest.raises(HeadprofError, match="not a file name"):
        validation.check_output(tmp_path / "..", [])
    validation.check_output(tmp_path / "new" / "b", [tmp_path / "a"])
    assert not (tmp_path / "new").exists()  # nothing created


@pytest.mark.parametrize(
    ("text", "error"),
    [("1,2", None), (" 3 , 4 ", None), ("1.5", "Invalid value"), ("٣", "Invalid value"), ("", None), ("1,,2", None)],
)
def test_int_lists(text, error):
    if error:
        with pytest.raises(HeadprofError, match=error) as info:
            validation.int_list(text, "--x")
        assert info.value.exit_code == 2
    else:
        assert validation.int_list(text, "--x") == [int(x) for x in text.split(",") if x.strip()]


def test_sliding_window_layers_are_not_budgeted_and_their_rows_checked():
    """Models with sliding-window layers (families) allocate over the global layers only: a window layer's
    row is 0, which must load; a forged budget there, or a malformed layer list, must not."""
    budgets = torch.full((3, 2), 64)
    budgets[1] = 0
    validation.budget_table(budgets, "budgets", (3, 2), 8, 1024, window_layers=[1])
    budgets[1] = 64
    with pytest.raises(HeadprofError, match=r"sliding-window layers \[1\]"):
        validation.budget_table(budgets, "budgets", (3, 2), 8, 1024, window_layers=[1])
    block = {"model_id": "m", "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "head_dim": 8, "max_context": 64}
    kinds = ["sliding_attention", "full_attention"]
    assert validation.model_info({**block, "layer_types": kinds, "sliding_window": 16}, "a").window_layers == [0]
    for bad, message in [
        ({"layer_types": "sliding"}, "layer_types must be a list"),
        ({"layer_types": kinds[:1]}, "layer_types has 1 entries"),
        ({"layer_types": [1, 2]}, "layer_types must be a list of strings"),
        ({"sliding_window": -1}, "sliding_window must be an integer"),
    ]:
        with pytest.raises(HeadprofError, match=message):
            validation.model_info({**block, **bad}, "a")


def test_needle_span_on_template_tokens_is_refused():
    from headprof.models.loading import load_tokenizer
    from headprof.probes import Probe, encode_probe

    tokenizer, _ = load_tokenizer("smollm2-135m")
    row = json.loads((REFERENCE / "probes.jsonl").read_text().splitlines()[0])
    encode_probe(tokenizer, Probe.from_dict(row))  # the real probe is fine
    span_on_template(row)
    with pytest.raises(HeadprofError, match="template"):
        encode_probe(tokenizer, Probe.from_dict(row))
    row = json.loads((REFERENCE / "probes.jsonl").read_text().splitlines()[0])
    end = row["prompt"].index("Question:")  # the question is user text, but not the context
    row.update(
        needle_chars=[end, end + 9],
        sentence_chars=[end, end + 9],
        answer_chars=[end, end + 8],
        target="Question:",
        answer="Question",
    )
    with pytest.raises(HeadprofError, match="not in the context"):
        encode_probe(tokenizer, Probe.from_dict(row))


def test_validation_is_a_light_import():
    import subprocess
    import sys

    code = "import sys, headprof.validation; print(sorted(m for m in sys.modules if m in ('torch', 'transformers')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
