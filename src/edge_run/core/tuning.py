"""Is a model instruction-tuned (made to answer a chat), a base model (made to continue text), or unknown?

Read from the facts its files state, never guessed from its size or quality:

    GGUF        general.name / basename / finetune / tags, tokenizer.chat_template, the EOS and EOT tokens' text
    checkpoint  folder name, config.json's _name_or_path, README.md model-card tags, tokenizer_config.json's
                eos_token and chat_template, chat_template.jinja, generation_config.json's eos_token_id (by the
                added tokens of tokenizer_config.json)

RULES, the first that applies decides:

    name        a name or tag says so (NAME_MARKERS): "-Instruct", "-it", "chat", "sft" / "base", "-pt"
    stops       the model stops at a chat turn's end token (TURN_ENDS: <|im_end|>, <end_of_turn>, <|eot_id|>, ...):
                it was trained to end its turn -> instruct (SmolLM2-135M-Instruct's EOS is <|im_end|>)
    template    its chat template ends turns with a token the model does not stop at: a template beside a
                base model (Gemma 3 270M: turns end with <end_of_turn>, the model stops at <eos> only) -> base
    none        no chat template at all -> base
    otherwise   unknown

Library only (core: converters record it in the manifest at convert time, the picker reads it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_run.core.errors import EdgeRunError
from edge_run.core.fsutil import read_regular_file
from edge_run.core.gguf_header import read_gguf_header
from edge_run.core.stamp_cache import StampCache

INSTRUCT, BASE, UNKNOWN = "instruct", "base", "unknown"
KINDS = (INSTRUCT, BASE, UNKNOWN)

# (pattern over a lower-cased name or tag, verdict): a whole word unless the pattern says otherwise
NAME_MARKERS: tuple[tuple[str, str], ...] = (
    (r"instruct\w*", INSTRUCT),  # -Instruct, -instruction, InstructLM
    (r"chat\w*", INSTRUCT),  # -Chat, chatml
    (r"it", INSTRUCT),  # Gemma's -it
    (r"sft|dpo|rlhf|orpo|kto|simpo", INSTRUCT),  # tuning methods named in a finetune label
    (r"conversational|assistant", INSTRUCT),  # Hugging Face's pipeline tag, model-card tags
    (r"base", BASE),
    (r"pt|pretrained|pretrain|pre-trained", BASE),  # Gemma's -pt
)
# tokens that end one chat turn (a model trained to chat stops at it), by template family
TURN_ENDS: frozenset[str] = frozenset({
    "<|im_end|>",  # ChatML: SmolLM2, Qwen
    "<end_of_turn>",  # Gemma
    "<|eot_id|>",  # Llama 3
    "<|end|>",  # Phi-3
    "<|endofturn|>", "<|END_OF_TURN_TOKEN|>",  # Command-R
    "<|assistant_end|>",
})
MAX_JSON_BYTES = 1 << 20  # config / tokenizer_config / generation_config / model card: small files
MAX_CARD_LINES = 200  # a model card's front matter is read up to here
GGUF_TOKEN_SKIP = frozenset({"tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"})


@dataclass(frozen=True)
class Facts:
    """What a model's files say about it. ``stops``: the text of the tokens it stops at that are known here
    (``all_stops_known``: all of them); ``template``: its chat template (None: it has none)."""

    names: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    stops: tuple[str, ...] = ()
    all_stops_known: bool = False
    template: str | None = None


@dataclass(frozen=True)
class Tuning:
    kind: str  # INSTRUCT | BASE | UNKNOWN
    why: str = field(default="", compare=False)  # the fact that decided it, one phrase

    @property
    def label(self) -> str:
        return {INSTRUCT: "instruction-tuned", BASE: "a base model (no chat tuning)",
                UNKNOWN: "not known to be instruction-tuned"}[self.kind]

    def to_dict(self) -> dict[str, str]:
        return {"tuning": self.kind, "tuning_basis": self.why}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tuning | None:
        """The tuning recorded in a manifest's extra (untrusted: None unless well-formed)."""
        kind, why = d.get("tuning"), d.get("tuning_basis", "")
        return cls(kind, why) if kind in KINDS and isinstance(why, str) else None


def _marker(text: str) -> tuple[str, str] | None:
    words = text.lower()
    for pattern, verdict in NAME_MARKERS:
        m = re.search(rf"(?<![a-z0-9_])(?:{pattern})(?![a-z0-9_])", words)
        if m:
            return verdict, m.group(0)
    return None


def _by_name(f: Facts) -> Tuning | None:
    for what, values in (("name", f.names), ("tag", f.tags)):
        for value in values:
            found = None if ":" in value else _marker(value)  # not a namespaced tag (base_model:..., license:...)
            if found:
                return Tuning(found[0], f"{what} {value!r} says {found[1]!r}")
    return None


def _by_stops(f: Facts) -> Tuning | None:
    turn = next((s for s in f.stops if s in TURN_ENDS), None)
    return Tuning(INSTRUCT, f"it stops at {turn}, a chat turn's end") if turn else None


def _by_template(f: Facts) -> Tuning | None:
    if f.template is None or not f.all_stops_known:
        return None
    ends = sorted(t for t in TURN_ENDS if t in f.template)
    if ends and not set(ends) & set(f.stops):
        return Tuning(BASE, f"its chat template ends turns with {ends[0]}, which it does not stop at")
    return None


def _by_no_template(f: Facts) -> Tuning | None:
    return Tuning(BASE, "it has no chat template") if f.template is None else None


RULES: tuple[Callable[[Facts], Tuning | None], ...] = (_by_name, _by_stops, _by_template, _by_no_template)


def classify(facts: Facts) -> Tuning:
    for rule in RULES:
        verdict = rule(facts)
        if verdict is not None:
            return verdict
    return Tuning(UNKNOWN, "no name, tag or token says")


# ------------------------------------------------------------------------------------- facts from files

def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(read_regular_file(path, path.name, MAX_JSON_BYTES).decode("utf-8"))
    except (EdgeRunError, ValueError, RecursionError):  # unreadable or not JSON: no facts from it
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<|im_end|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def _card_tags(path: Path) -> tuple[str, ...]:
    """The ``tags:`` of a model card's YAML front matter (a list, block or inline)."""
    try:
        lines = read_regular_file(path, path.name, MAX_JSON_BYTES).decode("utf-8", "replace").splitlines()
    except EdgeRunError:
        return ()
    if not lines or lines[0].strip() != "---":
        return ()
    tags: list[str] = []
    in_tags = False
    for line in lines[1:MAX_CARD_LINES]:
        if line.strip() == "---":
            break
        key, sep, rest = line.partition(":")
        if sep and not line.startswith((" ", "-", "\t")):
            in_tags = key.strip() == "tags"
            if in_tags and rest.strip().startswith("["):
                tags += [t.strip(" '\"") for t in rest.strip(" []").split(",") if t.strip(" '\"")]
        elif in_tags and line.strip().startswith("- "):
            tags.append(line.strip()[2:].strip(" '\""))
    return tuple(tags)


def _templates(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": "..."}, ...]
        texts = [t["template"] for t in value if isinstance(t, dict) and isinstance(t.get("template"), str)]
        return "\n".join(texts) if texts else None
    return None


def checkpoint_facts(folder: Path) -> Facts:
    folder = Path(folder)
    config, tok, gen = (_json(folder / n) for n in ("config.json", "tokenizer_config.json", "generation_config.json"))
    names = [folder.resolve().name, folder.name,
             *(v for k in ("_name_or_path", "_model_name_or_path") if isinstance(v := config.get(k), str))]
    template = _templates(tok.get("chat_template"))
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        try:
            template = read_regular_file(jinja, jinja.name, MAX_JSON_BYTES).decode("utf-8", "replace")
        except EdgeRunError:
            template = ""  # present but unreadable: a template, of unknown text
    if template is None:
        template = _templates(_json(folder / "chat_template.json").get("chat_template"))
    card = folder / "README.md"
    stops, complete = _checkpoint_stops(config, tok, gen)
    return Facts(names=tuple(dict.fromkeys(n for n in names if n)),
                 tags=_card_tags(card) if card.is_file() else (), stops=stops, all_stops_known=complete,
                 template=template)


def _checkpoint_stops(config: Mapping[str, Any], tok: Mapping[str, Any],
                      gen: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """(the text of each stop token known here, whether every one is known): tokenizer_config's EOS token, and
    generation_config's EOS ids by the added tokens' table (or config.json's EOS id for that token)."""
    eos = _token_text(tok.get("eos_token"))
    added = tok.get("added_tokens_decoder")
    known = {str(k): t for k, v in added.items() if (t := _token_text(v))} if isinstance(added, dict) else {}
    if eos is not None and isinstance(config.get("eos_token_id"), int):
        known.setdefault(str(config["eos_token_id"]), eos)
    stops = [eos] if eos else []
    ids = gen.get("eos_token_id", [])
    texts = [known.get(str(i)) for i in (ids if isinstance(ids, list) else [ids])]
    stops += [t for t in texts if t is not None]
    return tuple(dict.fromkeys(stops)), bool(stops) and None not in texts


def gguf_facts(fields: Mapping[str, Any], tokens: list[str] | None) -> Facts:
    """From a GGUF header's fields; ``tokens`` (tokenizer.ggml.tokens) names the stop tokens (None: not read)."""
    names = [v for k in ("general.name", "general.basename", "general.finetune") if isinstance(v := fields.get(k), str)]
    tags = fields.get("general.tags")
    stop_ids = [v for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                if isinstance(v := fields.get(k), int) and not isinstance(v, bool)]
    known = [str(tokens[i]) for i in stop_ids if 0 <= i < len(tokens)] if tokens is not None else []
    template = fields.get("tokenizer.chat_template")
    return Facts(names=tuple(names), tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
                 stops=tuple(known), all_stops_known=bool(known) and len(known) == len(stop_ids),
                 template=template if isinstance(template, str) else None)


GGUF_TUNING = StampCache("gguf-tuning")  # path, size, mtime -> {"tuning", "tuning_basis"}: a vocabulary read once


def of_checkpoint(folder: Path) -> Tuning:
    return classify(checkpoint_facts(folder))


def of_gguf(path: Path) -> Tuning:
    """A GGUF file's tuning; the vocabulary is read only when its names and template leave it open.
    ArtifactError when the file is not a readable GGUF."""
    cached = GGUF_TUNING.get(path)
    if isinstance(cached, dict) and (known := Tuning.from_dict(cached)) is not None:
        return known
    header = read_gguf_header(path)
    facts = gguf_facts(header.fields, None)
    verdict = _by_name(facts) or _by_no_template(facts)
    if verdict is None:
        full = read_gguf_header(path, max_items=None, skip_keys=GGUF_TOKEN_SKIP)
        tokens = full.fields.get("tokenizer.ggml.tokens")
        verdict = classify(gguf_facts(full.fields, tokens if isinstance(tokens, list) else None))
    GGUF_TUNING.put(path, verdict.to_dict())
    return verdict


def first_known(*sources: Callable[[], Tuning | None]) -> Tuning:
    """The first source's verdict other than unknown (a source that fails says nothing), else unknown."""
    last = Tuning(UNKNOWN, "no name, tag or token says")
    for source in sources:
        try:
            verdict = source()
        except EdgeRunError:
            continue
        if verdict is not None:
            if verdict.kind != UNKNOWN:
                return verdict
            last = verdict
    return last


def recorded(extra: Any) -> Tuning | None:
    """What a manifest's ``extra`` records (written by the converters), None if nothing usable."""
    return Tuning.from_dict(extra) if isinstance(extra, Mapping) else None

