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
import signal
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
from headprof.models.spec import checked_model_info, resolve_model, slugify

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
    eval_lines = (REFERENCE / "eval-probes.jsonl").read_text().splitlines()
    (root / "ep.jsonl").write_text("\n".join(eval_lines[:2]) + "\n")
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
        header["probe_ids"] = [f"same@1@{i}" for i in range(len(header["probe_ids"]))]

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


# ---------------------------------------------------------------- second round (issue 24)

PACKAGE_DATA = REFERENCE.parents[1]


def fifo(name: str) -> Callable[[Path], None]:
    """A named pipe: opening it for reading blocks until a writer comes (it never does)."""
    return lambda box: os.mkfifo(box / name)


def link(name: str, target: str) -> Callable[[Path], None]:
    return lambda box: os.symlink(target, box / name)


def model_folder(gguf: Callable[[Path], None]) -> Callable[[Path], None]:
    """A model folder `m/` whose one `.gguf` is what `gguf(path)` makes (a pipe, a link to /dev/zero)."""

    def setup(box: Path) -> None:
        (box / "m").mkdir()
        gguf(box / "m" / "w.gguf")

    return setup


def bad_config(**fields) -> Callable[[Path], None]:
    def setup(box: Path) -> None:
        config = {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
        (box / "cfg").mkdir()
        (box / "cfg" / "config.json").write_text(json.dumps({**config, **fields}))

    return setup


def shard_copy(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """`t.safetensors`: the scores again with a changed header (another run's shard)."""

    def setup(box: Path) -> None:
        shutil.copy(box / "s.safetensors", box / "t.safetensors")
        forge_scores(box / "t.safetensors", meta=change)

    return setup


def _other_indices(header):
    header["probe_indices"] = [i + len(header["probe_ids"]) for i in header["probe_indices"]]
    header["probe_set_size"] = 2 * len(header["probe_ids"])


def _other_version(header):
    header["version"] = "0.0.1"


def _duplicate_id(header):
    header["probe_ids"][1] = header["probe_ids"][0]


def _sliding_window_zero(header):
    header["model"].update(layer_types=["sliding_attention"] * header["model"]["n_layers"], sliding_window=0)


def _no_probes(data):
    for key in ("per_probe.r2", "per_probe.retrieval", "counted", "right"):
        data[key] = data[key][:0]


def _no_probe_ids(header):
    for key in ("probe_ids", "probe_kinds", "probe_groups", "answers", "probe_indices"):
        header[key] = []


def _none_counted(data):
    data["counted"].zero_()


def cache_row(**change) -> Callable[[Path], None]:
    """`c.jsonl`, a results cache of one row edited by `change` (a value, or None to drop the field)."""
    record = {
        "method": "snapkv",
        "budget": 64,
        "item": "x",
        "kind": "retrieval",
        "length": 512,
        "depth": 50.0,
        "answer": "a",
        "exact": True,
        "f1": 1.0,
        "kv_bytes": 10,
        "kv_bytes_full": 20,
        "task": "",
        "score": None,
    }
    for key, value in change.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return write("c.jsonl", json.dumps({"key": "k", "record": record}) + "\n")


def raw_separators(box: Path) -> None:
    """The first probe's question holds raw U+2028 and U+0085 (valid JSON: they need no escape)."""
    for name in ("p.jsonl", "ep.jsonl"):
        rows = [json.loads(line) for line in (box / name).read_text().splitlines()]
        rows[0]["question"] += " \u2028 \x85"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (box / name).write_text(text, encoding="utf-8")
    (box / "d").mkdir()


EVAL_P = ["eval", "--probes", "ep.jsonl", "--methods", "snapkv", "--budgets", "64"]


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
    # ---- second round (issue 24)
    # hangs: inputs must be regular files of bounded size, checked before they are opened
    ("hang", ["show", "f.safetensors"], 1, "not a regular file", fifo("f.safetensors")),
    ("hang", ["show", "z.safetensors"], 1, "not a regular file", link("z.safetensors", "/dev/zero")),
    ("hang", ["import", "f.json"], 1, "not a regular file", fifo("f.json")),
    ("hang", ["import", "z.json"], 1, "not a regular file", link("z.json", "/dev/zero")),
    ("hang", ["import", "s.json", "--model", "m"], 1, "not a regular file", model_folder(os.mkfifo)),
    (
        "hang",
        ["import", "s.json", "--model", "m"],
        1,
        "not a regular file",
        model_folder(lambda p: os.symlink("/dev/zero", p)),
    ),
    ("hang", ["import", "s.json", "--model", "z.gguf"], 1, "not a regular file", link("z.gguf", "/dev/zero")),
    ("hang", ["score", "--probes", "f.jsonl"], 1, "not a regular file", fifo("f.jsonl")),
    ("hang", ["eval", "--task", "f.jsonl"], 1, "not a regular file", fifo("f.jsonl")),
    ("hang", ["probes", "build", "--needles", "f.jsonl"], 1, "not a regular file", fifo("f.jsonl")),
    ("hang", ["run", "--context-file", "f.txt", "--question", "q"], 1, "not a regular file", fifo("f.txt")),
    (
        "hang",
        [*ALLOCATE[:2], "z.safetensors", *ALLOCATE[3:]],
        1,
        "not a regular file",
        link("z.safetensors", "/dev/zero"),
    ),
    # writes outside the chosen folder: package data is never a workspace or an output
    ("outside", ["--workdir", PACKAGE_DATA, "allocate", "--budget", "128"], 1, "package data", None),
    ("outside", ["--workdir", REFERENCE, "probes", "build", "--needles", "n.jsonl"], 1, "package data", None),
    ("outside", [*ALLOCATE, "--out", REFERENCE / "alloc.safetensors"], 1, "package data", None),
    ("outside", ["export", "s.safetensors", "--out", REFERENCE / "scores.json"], 1, "package data", None),
    # data loss: a results cache that is a device, a pipe
    ("data loss", [*EVAL_P, "--cache", "z.jsonl"], 1, "not a regular file", link("z.jsonl", "/dev/zero")),
    ("data loss", [*EVAL_P, "--cache", "f.jsonl"], 1, "not a regular file", fifo("f.jsonl")),
    # wrong results accepted before
    ("wrong result", ALLOCATE, 1, "appears twice", lambda b: forge_scores(b / "s.safetensors", meta=_duplicate_id)),
    (
        "wrong result",
        ["merge", "s.safetensors", "t.safetensors", "--out", "m.st"],
        1,
        "shards overlap",
        shard_copy(_other_indices),
    ),
    (
        "wrong result",
        ["merge", "s.safetensors", "t.safetensors", "--out", "m.st"],
        1,
        "shards differ in version",
        shard_copy(_other_version),
    ),
    (
        "wrong result",
        ALLOCATE,
        1,
        "the window is 0",
        lambda b: forge_scores(b / "s.safetensors", meta=_sliding_window_zero),
    ),
    ("wrong result", ["run", "--budget", "100000", "--context", "x", "--question", "y"], 1, "8192 positions", None),
    ("wrong result", [*EVAL_P[:-1], "100000"], 1, "8192 positions", None),
    ("wrong result", ["allocate", "--scores", "s.safetensors", "--budget", "2147483647"], 1, "8192", None),
    (
        "wrong result",
        RUN_ALLOC,
        1,
        "beyond the model's 8192 positions",
        lambda b: forge_alloc(b / "a.safetensors", lambda t: torch.full_like(t, 2**31 - 1)),
    ),
    ("wrong result", [*EVAL_P, "--cache", "c.jsonl"], 1, "f1 1.5 is not a valid value", cache_row(f1=1.5)),
    ("wrong result", [*EVAL_P, "--cache", "c.jsonl"], 1, "kv_bytes -5 is not a valid value", cache_row(kv_bytes=-5)),
    ("wrong result", [*EVAL_P, "--cache", "c.jsonl"], 1, "exact 1 is not", cache_row(exact=1)),
    ("wrong result", ALLOCATE, 1, "no counted probe", lambda b: forge_scores(b / "s.safetensors", _none_counted)),
    (
        "wrong result",
        ["export", "s.safetensors", "--out", "e.json"],
        1,
        "no counted probe",
        lambda b: forge_scores(b / "s.safetensors", _none_counted),
    ),
    # internal errors before
    (
        "internal",
        ["show", "s.safetensors"],
        1,
        "holds no probes",
        lambda b: forge_scores(b / "s.safetensors", _no_probes, _no_probe_ids),
    ),
    (
        "internal",
        ["export", "s.safetensors", "--out", "e.json"],
        1,
        "holds no probes",
        lambda b: forge_scores(b / "s.safetensors", _no_probes, _no_probe_ids),
    ),
    ("internal", ["import", "s.json", "--model", "cfg"], 1, "num_hidden_layers", bad_config(num_hidden_layers=-1)),
    (
        "internal",
        ["import", "s.json", "--model", "cfg"],
        1,
        "cannot read the config",
        bad_config(num_attention_heads=0),
    ),
    (
        "internal",
        RUN_ALLOC,
        1,
        "budget must be an integer",
        lambda b: forge_alloc(b / "a.safetensors", meta=lambda h: h.__setitem__("budget", "abc")),
    ),
    ("internal", [*EVAL_P, "--cache", "c.jsonl"], 1, "lacks ['f1']", cache_row(f1=None)),
    ("internal", [*EVAL_P, "--cache", "c.jsonl"], 1, "has unknown ['extra']", cache_row(extra=1)),
    ("internal", [*EVAL_P, "--cache", "c.jsonl"], 1, "not a {'key', 'record'} row", write("c.jsonl", "[1]\n")),
    # late: refused before any model loads or probe runs
    ("late", ["score", "--probes", "p.jsonl", "--bootstrap", "0"], 1, "--bootstrap must be at least 1", None),
    ("late", ["score", "--probes", "p.jsonl", "--splits", "0", "--bootstrap", "0"], 1, "--splits must be", None),
    ("late", ["show", "s.safetensors", "--bootstrap", "0"], 1, "--bootstrap must be at least 1", None),
    (
        "late",
        ["ablate", "--scores", "s.safetensors", "--probes", "p.jsonl", "--top", "1,200", "--random-trials", "1"],
        1,
        "at most 135",
        None,
    ),
    (
        "late",
        RUN_ALLOC,
        1,
        "allocation was made for",
        lambda b: forge_alloc(b / "a.safetensors", meta=lambda h: h["model"].__setitem__("head_dim", 32)),
    ),
    ("late", [*EVAL_P, "--scores", "o.safetensors"], 1, "score artifact was made for", other_architecture),
    (
        "late",
        ["run", "--scores", "o.safetensors", "--context", "x", "--question", "y"],
        1,
        "score artifact was made for",
        other_architecture,
    ),
    (
        "late",
        ["run", "--budget", "64", "--compression-ratio", "0.5", "--context", "x", "--question", "y"],
        2,
        "not both",
        None,
    ),
    ("late", ["run", "--compression-ratio", "1.5", "--context", "x", "--question", "y"], 1, "must be in [0, 1)", None),
    # round trip: raw U+2028 / U+0085 inside a JSON string are text, not line ends (the file reads past them)
    ("round trip", ["score", "--probes", "p.jsonl", "--out", "d"], 1, "is a directory", raw_separators),
    (
        "round trip",
        [*EVAL_P, "--report", "d"],
        1,
        "is a directory",
        raw_separators,
    ),
]


def _id(case) -> str:
    return f"{case[0]}: {' '.join(map(str, case[1]))}"[:90]


class Hung(BaseException):
    """Raised by the alarm in a case that blocks (a read of a pipe): not an Exception, so the CLI can't catch it."""


class ModelLoaded(BaseException):
    """Raised where a case would load a model's weights: every check must fire before."""


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_hostile_input_is_one_clean_error(case, cli, sandbox, monkeypatch):
    _kind, args, code, fragment, setup = case

    def loaded(*_a, **_k):
        raise ModelLoaded(f"a model loaded for: {' '.join(map(str, args))}")

    def hung(*_a):
        raise Hung(f"still running after 60 s: {' '.join(map(str, args))}")

    monkeypatch.setattr("headprof.models.loading.load_model", loaded)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        _run_case(cli, sandbox, monkeypatch, args, code, fragment, setup)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _run_case(cli, sandbox, monkeypatch, args, code, fragment, setup):
    if any("gguf" in str(a) for a in args):  # its dequantization key goes to a cache of its own, not the shared one
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
    first = {"markup", "data loss", "code", "outside", "wrong result", "internal", "late", "usage"}
    assert set(counts) == first | {"hang", "round trip"}


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
        monkeypatch.setattr("headprof.score_job.load_probes", interrupt)
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
    assert checked_model_info({**block, "layer_types": kinds, "sliding_window": 16}, "a").window_layers == [0]
    for bad, message in [
        ({"layer_types": "sliding"}, "layer_types must be a list"),
        ({"layer_types": kinds[:1]}, "layer_types has 1 entries"),
        ({"layer_types": [1, 2]}, "layer_types must be a list of strings"),
        ({"sliding_window": -1}, "sliding_window must be an integer"),
    ]:
        with pytest.raises(HeadprofError, match=message):
            checked_model_info({**block, **bad}, "a")


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


# ---------------------------------------------------------------- second round: what a CLI row cannot reach


def test_checkpoint_clean_up_takes_the_output_name_literally(tmp_path):
    """`--out 'sc[12].safetensors'` removes its own checkpoints, not those of sc1 / sc2 (a glob would)."""
    from headprof.scoring import remove_checkpoints

    others = [tmp_path / "sc1.safetensors.partial", tmp_path / "sc2.safetensors.partial.lock"]
    mine = [tmp_path / "sc[12].safetensors.partial", tmp_path / "sc[12].safetensors.partial.rank1"]
    for path in others + mine:
        path.write_text("x")
    remove_checkpoints(tmp_path / "sc[12].safetensors")
    assert all(p.exists() for p in others) and not any(p.exists() for p in mine)


def test_a_torn_results_cache_line_does_not_swallow_the_next_record(tmp_path):
    from headprof.evaluation import EvalRecord, ResultCache

    path = tmp_path / "c.jsonl"
    first = EvalRecord("snapkv", 64, "a", "retrieval", 512, 50.0, "x", True, 1.0, 10, 20)
    ResultCache.open(path).add("k1", first)
    with open(path, "a") as fh:  # kill -9 in the middle of a row
        fh.write('{"key": "k2", "record": {"method": "sn')
    ResultCache.open(path).add("k3", EvalRecord("snapkv", 64, "b", "retrieval", 512, 50.0, "y", False, 0.0, 10, 20))
    rows = ResultCache.open(path).rows
    assert set(rows) == {"k1", "k3"} and rows["k1"]["answer"] == "x" and rows["k3"]["answer"] == "y"


def test_cache_keys_stay_inside_the_cache(tmp_path, monkeypatch):
    """A `.keys.json` mapping a GGUF to `/../../../X` is ignored: the folder is the file's hash, in the cache."""
    from headprof.models.gguf import dequantized_dir
    from headprof.models.spec import ModelSpec

    monkeypatch.setenv("HEADPROF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "w.gguf").write_bytes(b"GGUF weights")
    gguf = tmp_path / "w.gguf"
    ident = f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}"
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / ".keys.json").write_text(json.dumps({ident: "/../../../X"}))
    folder = dequantized_dir(ModelSpec("w", "w", "w", str(tmp_path), "w.gguf"))
    assert folder.parent == tmp_path / "cache" / "models"
    assert folder.name == f"w-{hashlib.sha256(b'GGUF weights').hexdigest()[:16]}"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_jsonl_keeps_line_separators_inside_strings(tmp_path, separator):
    """Rows holding U+2028 / U+2029 / U+0085 are written escaped and read back whole; a raw one (valid JSON)
    also reads as one row: files split at newlines only."""
    from headprof.probes import Probe, load_probes, write_probes
    from headprof.tasks.rows import read_task_file

    row = json.loads((REFERENCE / "probes.jsonl").read_text().splitlines()[0])
    row["question"] += f" {separator} ?"
    write_probes(tmp_path / "p.jsonl", [Probe.from_dict(row)])
    assert separator not in (tmp_path / "p.jsonl").read_text(encoding="utf-8")
    assert load_probes(tmp_path / "p.jsonl")[0].question == row["question"]
    raw = json.dumps({"context": f"a{separator}b", "input": "q", "answers": ["x"]}, ensure_ascii=False)
    (tmp_path / "t.jsonl").write_text(raw + "\n", encoding="utf-8")
    assert [r.context for r in read_task_file(tmp_path / "t.jsonl")] == [f"a{separator}b"]
