"""Every key of a real config.json, and every section of its tokenizer.json, set to every kind of odd value:
`convert` either succeeds or fails with one `error:` line and an input/usage code, never exit 1 (an internal
error). Sweeps like these found values that reached gguf-py or numpy unchecked (text_config null, bos_token_id -1,
layer_types 2.5, a pre_tokenizer that is a string, ...).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ODD_VALUES: tuple[object, ...] = (None, "abc", -1, 0, 1e300, [], {}, True, 10**15, 2.5)
EXTRA_KEYS = ("text_config", "rope_parameters", "rope_scaling", "layer_types", "sliding_window", "head_dim",
              "layer_norm_eps", "query_pre_attn_scalar")


def _variant(src: Path, dest: Path, key: str, value: object) -> Path:
    """``src`` with config.json's ``key`` set to ``value``; the other files are symlinks (no copies)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "config.json":
            (dest / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    cfg[key] = value
    (dest / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return dest


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_no_config_value_is_an_internal_error(fmt: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.cli.main import main

    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    src = tiny_checkpoint("llama")
    keys = sorted(set(json.loads((src / "config.json").read_text(encoding="utf-8"))) | set(EXTRA_KEYS))
    # gguf at f16: written in-process, no quantizer child per case
    quant = ["--quant", "f16"] if fmt == "gguf" else ["--format", "onnx", "--quant", "int4"]
    internal: list[str] = []
    for key in keys:
        for i, value in enumerate(ODD_VALUES):
            ckpt = _variant(src, tmp_path / f"{key}-{i}", key, value)
            err = io.StringIO()
            with redirect_stdout(io.StringIO()), redirect_stderr(err):
                code = main(["convert", str(ckpt), *quant, "--out", str(ckpt / "out"), "--json"])
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            if code == 1 or (code != 0 and (len(lines) != 1 or not lines[0].startswith("error: "))):
                internal.append(f"{key}={value!r}: exit {code}: {err.getvalue().strip()[-160:]}")
    assert internal == [], "\n".join(internal)


def test_no_tokenizer_json_value_is_an_internal_error(tiny_checkpoint: Callable[[str], Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for tokenizer.json: every top-level section and every key of its model set to odd values."""
    from edge_run.cli.main import main

    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    src = tiny_checkpoint("llama")
    tok0 = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    paths = [(k,) for k in tok0] + [("model", k) for k in tok0["model"]]
    internal: list[str] = []
    for n, path in enumerate(paths):
        for i, value in enumerate(ODD_VALUES):
            ckpt = tmp_path / f"t{n}-{i}"
            ckpt.mkdir()
            for f in src.iterdir():
                if f.name != "tokenizer.json":
                    (ckpt / f.name).symlink_to(f)
            tok = json.loads(json.dumps(tok0))
            (tok if len(path) == 1 else tok["model"])[path[-1]] = value
            (ckpt / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
            err = io.StringIO()
            with redirect_stdout(io.StringIO()), redirect_stderr(err):
                code = main(["convert", str(ckpt), "--quant", "f16", "--out", str(ckpt / "out"), "--json"])
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            if code == 1 or (code != 0 and (len(lines) != 1 or not lines[0].startswith("error: "))):
                internal.append(f"{'.'.join(path)}={value!r}: exit {code}: {err.getvalue().strip()[-160:]}")
    assert internal == [], "\n".join(internal)
