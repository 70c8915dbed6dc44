"""ONNX backend over onnxruntime: the graph edge-run's converter writes, HF tokenizers, numpy sampling.

KV cache: one preallocated [1, kv_heads, n_ctx, head_dim] f32 buffer per layer and side, bound with
IOBinding as both ``past_key_values.N.*`` and ``present.N.*``. GroupQueryAttention sees the same
memory on both sides and appends the new positions in place; ``attention_mask``'s length tells it
how many positions are valid. Nothing is reallocated per token:

    prefill  input_ids [1, P]   attention_mask [1, P]      logits_to_keep 1 -> logits [1, 1, V], cache[0:P]
    decode   input_ids [1, 1]   attention_mask [1, P+n+1]  logits_to_keep 1 -> logits [1, 1, V], cache[P+n]
    eval     input_ids [1, S]   attention_mask [1, S]      logits_to_keep 0 -> logits [1, S, V]
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edge_run.core.errors import ArtifactError, UsageError
from edge_run.runtime.backends.base import Backend, GenerationParams, LoadOptions
from edge_run.runtime.backends.sampling import sample_token

BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


CACHE_LINE = 64  # onnxruntime's own CPU allocator aligns this far; numpy's large arrays start 16 bytes past a page


def aligned_zeros(shape: tuple[int, ...], dtype: type = np.float32, align: int = CACHE_LINE) -> np.ndarray:
    """A zeroed array whose data starts on an ``align``-byte boundary (for buffers onnxruntime reads and writes
    in place: a misaligned KV row splits its vector loads across cache lines)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n].view(dtype).reshape(shape)


@lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet: printable bytes stand for themselves, the other bytes are shifted
    to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[str, int] = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"the ONNX artifact lacks {path.name}", "re-convert it with `edge-run convert`") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path.name} is not valid JSON ({e})", "re-convert the artifact") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{path.name} is not a JSON object", "re-convert the artifact")
    return data


class ONNXBackend(Backend):
    def __init__(self, path: Path, options: LoadOptions) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self._ort = ort
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        t0 = time.perf_counter()
        genai = _read_json(folder / "genai_config.json")
        try:
            model = genai["model"]
            dec = model["decoder"]
            self.n_layers, self.n_kv, self.head_dim = (int(dec["num_hidden_layers"]), int(dec["num_key_value_heads"]),
                                                       int(dec["head_size"]))
            self.n_vocab = int(model["vocab_size"])
            context = int(model.get("context_length") or options.n_ctx)
            filename = str(dec.get("filename", "model.onnx"))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"genai_config.json is malformed ({e!r} missing or invalid)",
                                "re-convert the artifact") from e
        eos = model.get("eos_token_id")
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._bos = model.get("bos_token_id")
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for missing / corrupt files
            raise ArtifactError(f"cannot load {folder / 'tokenizer.json'} ({e})", "re-convert the artifact") from e
        tcfg_path = folder / "tokenizer_config.json"
        self._tcfg = _read_json(tcfg_path) if tcfg_path.exists() else {}
        tok_json = _read_json(folder / "tokenizer.json")
        self._tok_json = tok_json
        self._plain_tokenizer: Any = None
        self._special = {int(a["id"]) for a in tok_json.get("added_tokens", []) if a.get("special")}
        self._byte_level = "ByteLevel" in json.dumps(tok_json.get("decoder") or {})
        self._pieces: dict[int, bytes] = {}

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, options.n_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(folder / filename), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several unrelated exception types for bad graphs
            raise ArtifactError(f"onnxruntime could not load {folder.name}/{filename} "
                                f"({' '.join(str(e).split())[:300]})",
                                "the artifact is corrupt or incomplete; re-convert it") from e
        outputs = {o.name for o in self.session.get_outputs()}
        inputs = {i.name for i in [*self.session.get_inputs(), *self.session.get_overridable_initializers()]}
        if not {"logits", "present.0.key"} <= outputs or "logits_to_keep" not in inputs:
            raise ArtifactError(f"{folder.name}/{filename} is not an edge-run decoder graph "
                                f"(outputs: {', '.join(sorted(outputs)[:4])}...)", "convert it with `edge-run convert`")
        self.load_seconds = time.perf_counter() - t0
        self.path = folder
        self.options = options
        self.n_ctx = min(options.n_ctx, context)
        self._cache: list[tuple[str, Any]] = []
        self._bindings: dict[bool, Any] = {}
        self._keep: list[Any] = []
        self._last_logits = np.zeros((1, 1, 0), dtype=np.float32)
        self._ones = np.ones((1, self.n_ctx), dtype=np.int64)  # every attention mask is a prefix of it

    # -- tokens ---------------------------------------------------------------------------------
    def bos_token_id(self) -> int | None:
        return int(self._bos) if self._bos is not None else None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=add_special).ids)
        bos = self.bos_token_id()
        if len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    def tokenize_plain(self, text: str) -> list[int]:
        """Without the special added tokens, special-token text is split like any other text by the BPE model (the
        other added tokens, such as Gemma's runs of newlines, stay: llama.cpp's user-defined tokens)."""
        if self._plain_tokenizer is None:
            from tokenizers import Tokenizer

            added = [a for a in self._tok_json.get("added_tokens", []) if not a.get("special")]
            self._plain_tokenizer = Tokenizer.from_str(json.dumps({**self._tok_json, "added_tokens": added}))
        return list(self._plain_tokenizer.encode(text, add_special_tokens=False).ids)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes:
        """The bytes a token spells (special tokens spell nothing, as in llama.cpp's detokenizer)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def _piece(self, token: int) -> bytes:
        if token in self._special:
            return b""
        text = self.tokenizer.id_to_token(token)
        if text is None:
            return b""
        if self._byte_level:
            table = byte_level_decoder()
            return bytes(table[ch] for ch in text if ch in table)
        m = BYTE_PIECE.match(text)
        if m:
            return bytes([int(m.group(1), 16)])
        return text.replace("\u2581", " ").encode("utf-8")

    def is_eog(self, token: int) -> bool:
        return token in self._eos

    def is_control(self, token: int) -> bool:
        """The special added tokens: tokenize matches them in the text, tokenize_plain never."""
        return token in self._special

    # -- the graph ------------------------------------------------------------------------------
    def _bind(self, last_only: bool) -> Any:
        """One IOBinding for last-position logits (into a fixed buffer) and one for every position, each
        with every layer's cache buffer bound as both past and present (buffers made once, shared)."""
        binding = self._bindings.get(last_only)
        if binding is None:
            ort = self._ort
            if not self._cache:
                for i in range(self.n_layers):
                    for kind in ("key", "value"):
                        self._cache.append((f"{i}.{kind}", ort.OrtValue.ortvalue_from_numpy(
                            aligned_zeros((1, self.n_kv, self.n_ctx, self.head_dim)))))
            binding = self.session.io_binding()
            for name, buf in self._cache:
                binding.bind_ortvalue_input(f"past_key_values.{name}", buf)
                binding.bind_ortvalue_output(f"present.{name}", buf)
            keep = ort.OrtValue.ortvalue_from_numpy(np.array(1 if last_only else 0, dtype=np.int64))
            self._keep.append(keep)  # bound by reference: keep it alive (an overridable initializer, so
            binding.bind_ortvalue_input("logits_to_keep", keep)  # bind_cpu_input cannot find it)
            if last_only:  # the OrtValue wraps this array's memory: read it there, no output list per token
                self._last_logits = aligned_zeros((1, 1, self.n_vocab))
                logits = ort.OrtValue.ortvalue_from_numpy(self._last_logits)
                self._keep.append(logits)
                binding.bind_ortvalue_output("logits", logits)
            self._bindings[last_only] = binding
        return binding

    def _run(self, tokens: list[int], past: int, last_only: bool) -> np.ndarray:
        """Feed ``tokens`` after ``past`` cached positions; return logits [1, 1 if last_only else S, vocab]
        (last_only: the bound buffer itself, overwritten by the next run)."""
        if past + len(tokens) > self.n_ctx:
            raise UsageError(f"{past + len(tokens)} tokens do not fit the context of {self.n_ctx}",
                             "raise --ctx or shorten the prompt")
        b = self._bind(last_only)
        b.bind_cpu_input("input_ids", np.asarray([tokens], dtype=np.int64))
        b.bind_cpu_input("attention_mask", self._ones[:, :past + len(tokens)])
        if not last_only:
            b.bind_output("logits")  # a fresh [1, S, vocab] for each call: S changes
        self.session.run_with_iobinding(b)
        if last_only:
            return self._last_logits  # the fixed buffer: valid until the next run
        out: np.ndarray = b.get_outputs()[-1].numpy()
        return out

    # -- evaluation -----------------------------------------------------------------------------
    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        if not tokens:
            raise UsageError("eval_logits needs at least one token")
        logits = self._run(list(tokens), 0, last_only=False)
        return np.ascontiguousarray(logits[0], dtype=np.float32)

    # -- generation -----------------------------------------------------------------------------
    def chat_template(self) -> str | None:
        template = self._tcfg.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template if isinstance(template, str) else None

    def template_tokens(self) -> dict[str, str]:
        return {"bos_token": self._token_text("bos_token"), "eos_token": self._token_text("eos_token")}

    def _token_text(self, key: str) -> str:
        value = self._tcfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else ""

    def token_stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[int]:
        """Prefill the prompt into the in-place KV cache, then sample (numpy) and feed back one token at a time."""
        rng = np.random.default_rng(params.seed)
        history = list(prompt_tokens)
        logits = self._run(history, 0, last_only=True)[0, -1]
        while True:
            token = sample_token(logits, params, rng, history)
            yield token
            history.append(token)
            logits = self._run([token], len(history) - 1, last_only=True)[0, -1]

    def close(self) -> None:
        self._bindings.clear()
        self._cache.clear()
