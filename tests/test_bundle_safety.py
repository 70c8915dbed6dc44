"""`edge-run bundle` under attack (issue 24), no cross build needed: the artifact is verified before anything is
written, only the files its manifest vouches for are copied, --out never overlaps an input, --force only ever
replaces a previous bundle, and unwritable or full places are one-line errors (tests/test_bundle.py has the
whole-bundle test)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from edge_run.core.errors import InputError
from edge_run.runtime.bundle import baseline_named
from edge_run.runtime.bundle.build import render

from .test_bundle import _leftovers


def _flipped(src: Path, folder: Path) -> Path:
    """A copy of ``src`` (with its manifest) whose last byte is flipped: same size and mtime class, wrong sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    data = bytearray(src.read_bytes())
    data[-1] ^= 0x01
    dst.write_bytes(bytes(data))
    shutil.copy(src.with_name(src.name + ".manifest.json"), folder / (src.name + ".manifest.json"))
    return dst


def test_bundle_refuses_a_bit_flipped_artifact_before_writing(cli, tiny_gguf: Path, tmp_path: Path) -> None:
    bad = _flipped(tiny_gguf, tmp_path / "models")
    out = tmp_path / "deploy" / "b"
    r = cli("bundle", bad, "--profile", "pi4-4gb", "--out", out)
    assert r.code == 5 and "does not match its manifest" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("b.tar.gz").exists() and not _leftovers(out.parent)
    r = cli("bundle", "--models", tmp_path / "models", "--profile", "pi4-4gb", "--out", out)  # the pick, too
    assert r.code == 5 and "does not match its manifest" in r.stderr


def _onnx_like(folder: Path, files: dict[str, bytes], listed: bool = True) -> Path:
    """A folder artifact whose manifest vouches for ``files`` (extra.files), as `edge-run convert --format onnx`
    writes it; listed=False: an older manifest that names the data file only."""
    from edge_run.core.manifest import Manifest, write_manifest

    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    write_manifest(folder, Manifest(
        format="onnx", artifact="model.onnx", source={"digest": "x", "path": "/home/me/ckpt"},
        architecture="LlamaForCausalLM", arch="llama", parameter_count=1, quant="int4-b32-asym", bits_per_weight=4.0,
        file_size=sum(map(len, files.values())), sha256=digests["model.onnx.data"], tokenizer="gpt2",
        context_length=512, extra={"files": digests} if listed else {}))
    return folder


ONNX_FILES = {"model.onnx": b"graph", "model.onnx.data": b"weights" * 100, "genai_config.json": b"{}",
              "tokenizer.json": b"{}"}


def test_bundle_copies_only_what_the_manifest_vouches_for(tmp_path: Path) -> None:
    from edge_run.core.manifest import read_manifest
    from edge_run.runtime.bundle.payload import copy_artifact

    art = _onnx_like(tmp_path / "m-int4", ONNX_FILES)
    (art / "old-bundle.tar.gz").write_bytes(b"a previous tarball")
    (art / ".DS_Store").write_bytes(b"finder")
    (art / "notes.txt").write_text("mine")
    (art / "sub").mkdir()
    (art / "sub" / "x.bin").write_bytes(b"x")
    models = tmp_path / "stage" / "models"
    models.parent.mkdir()
    copy_artifact(art, read_manifest(art), models)
    assert sorted(p.relative_to(models).as_posix() for p in models.rglob("*")) == \
        sorted([f"m-int4/{n}" for n in ONNX_FILES] + ["m-int4", "m-int4/manifest.json"])
    assert all((models / "m-int4" / n).read_bytes() == d for n, d in ONNX_FILES.items())
    assert "path" not in json.loads((models / "m-int4" / "manifest.json").read_text())["source"]


def test_bundle_refuses_a_file_that_changes_during_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.core.errors import IntegrityError
    from edge_run.core.manifest import read_manifest
    from edge_run.runtime.bundle import payload

    art = _onnx_like(tmp_path / "m", ONNX_FILES)
    manifest = read_manifest(art)
    (art / "tokenizer.json").write_bytes(b"[]")  # same size, other bytes: after the check, before the copy
    (tmp_path / "stage").mkdir()
    with pytest.raises(IntegrityError, match=r"tokenizer\.json changed while it was copied") as e:
        payload.copy_artifact(art, manifest, tmp_path / "stage" / "models")
    assert e.value.exit_code == 5


def test_bundle_refuses_a_folder_manifest_that_lists_no_files(tmp_path: Path) -> None:
    from edge_run.core.manifest import read_manifest
    from edge_run.runtime.bundle.payload import copy_artifact

    art = _onnx_like(tmp_path / "old", ONNX_FILES, listed=False)
    (tmp_path / "stage").mkdir()
    with pytest.raises(InputError, match="lists no files") as e:
        copy_artifact(art, read_manifest(art), tmp_path / "stage" / "models")
    assert "re-convert" in e.value.one_line() and not any((tmp_path / "stage").iterdir())


@pytest.mark.parametrize(("out", "needle"), [
    (lambda a: a, "is the input"),
    (lambda a: a.parent, "holds the input"),
    (lambda a: a.parent.parent, "holds the input"),
    (lambda a: a.with_name(a.name + ".manifest.json"), "is the input"),
    (lambda a: a.parent / "b" / "..", "names no new folder"),
])
def test_bundle_out_never_overlaps_the_input(cli, tiny_gguf: Path, tmp_path: Path, out, needle: str) -> None:
    models = tmp_path / "w" / "models"
    models.mkdir(parents=True)
    for p in (tiny_gguf, tiny_gguf.with_name(tiny_gguf.name + ".manifest.json")):
        shutil.copy(p, models / p.name)
    art = models / tiny_gguf.name
    before = _tree(tmp_path / "w")
    for force in ([], ["--force"]):
        r = cli("bundle", art, "--profile", "pi4-4gb", "--out", out(art), *force)
        assert r.code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert _tree(tmp_path / "w") == before
    r = cli("bundle", "--models", models, "--profile", "pi4-4gb", "--out", models / "deploy", "--force")
    assert r.code == 2 and "is inside the input" in r.stderr and _tree(tmp_path / "w") == before


def test_bundle_out_inside_an_onnx_folder_is_refused(cli, tmp_path: Path) -> None:
    art = _onnx_like(tmp_path / "m-int4", ONNX_FILES)
    r = cli("bundle", art, "--profile", "pi4-4gb", "--out", art / "deploy")
    assert r.code == 2 and "is inside the input" in r.stderr
    assert sorted(p.name for p in art.iterdir()) == sorted([*ONNX_FILES, "manifest.json"])


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"/") for p in folder.rglob("*")}


@pytest.mark.parametrize("out", [".", "/", "", ".."])
def test_bundle_out_that_names_no_folder(cli, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         out: str) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out, "--force")
    assert r.code == 2 and "names no new folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _previous_bundle(out: Path) -> None:
    """What a bundle leaves: install.sh, SHA256SUMS and the files it lists; OUT.tar.gz holding the folder."""
    (out / "models").mkdir(parents=True)
    (out / "models" / "m.gguf").write_bytes(b"GGUF")
    (out / "README.txt").write_text("r")
    (out / "install.sh").write_text("#!/bin/sh\n")
    (out / "SHA256SUMS").write_text(f"{hashlib.sha256(b'GGUF').hexdigest()}  models/m.gguf\n"
                                    f"{hashlib.sha256(b'r').hexdigest()}  README.txt\n")
    with tarfile.open(out.with_name(out.name + ".tar.gz"), "w:gz") as tf:
        tf.add(out, arcname=out.name)


def test_force_replaces_only_a_previous_bundle(tmp_path: Path) -> None:
    from edge_run.core.errors import OutputExistsError
    from edge_run.runtime.bundle.output import check_out

    out = tmp_path / "b"
    _previous_bundle(out)
    assert check_out(out, [], force=True) == tmp_path / "b.tar.gz"
    with pytest.raises(OutputExistsError, match="already exists"):
        check_out(out, [], force=False)
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty", [], force=True)
    for change, why in [(lambda: (out / "notes.txt").write_text("mine"), "it holds notes.txt"),
                        (lambda: (out / "models" / "mine.gguf").write_bytes(b"x"), "it holds models/mine.gguf"),
                        (lambda: (out / "SHA256SUMS").unlink(), "no readable SHA256SUMS"),
                        (lambda: (out / "link").symlink_to("/etc"), "symbolic link link")]:
        shutil.rmtree(out)
        out.with_name("b.tar.gz").unlink()
        _previous_bundle(out)
        change()
        with pytest.raises(OutputExistsError, match=re.escape(why)) as e:
            check_out(out, [], force=True)
        assert e.value.exit_code == 4 and "only ever replaces a previous bundle" in e.value.one_line()
    shutil.rmtree(out)
    _previous_bundle(out)
    out.with_name("b.tar.gz").write_bytes(b"my own archive")
    with pytest.raises(OutputExistsError, match=r"is not a \.tar\.gz archive"):
        check_out(out, [], force=True)
    with tarfile.open(out.with_name("b.tar.gz"), "w:gz") as tf:
        tf.add(out / "README.txt", arcname="other/README.txt")
    with pytest.raises(OutputExistsError, match="does not hold a folder b"):
        check_out(out, [], force=True)


def test_bundle_force_over_a_folder_of_the_users_keeps_it(cli, tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "home"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "cat.jpg").write_bytes(b"cat")
    (out / "SHA256SUMS").write_text("0" * 64 + "  photos/cat.jpg\n")
    (out / "thesis.tex").write_text("years of work")
    before = _tree(out)
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out, "--force")
    assert r.code == 4 and "is not a bundle edge-run wrote (it holds thesis.tex" in r.stderr
    assert _tree(out) == before and not _leftovers(tmp_path)
    tarball = tmp_path / "t.tar.gz"
    tarball.write_bytes(b"not a tarball")
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", tmp_path / "t", "--force")
    assert r.code == 4 and "t.tar.gz already exists and is not a bundle" in r.stderr
    assert tarball.read_bytes() == b"not a tarball"


def test_bundle_on_an_unwritable_place_is_one_line(cli, tiny_gguf: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for out in ("/proc/edge-run-bundle", "/dev/null/b", "/sys/x/y"):
        r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out)
        assert r.code == 4 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the folder fail as a read-only mount does
        import errno
        import tempfile

        def read_only(*_a: object, **_k: object) -> str:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", ro / "b")
    assert r.code == 4 and "choose an --out in a writable folder" in r.stderr, r.stderr
    assert not any(ro.iterdir())


def test_bundle_on_a_full_disk_is_one_line_and_leaves_nothing(cli, tiny_gguf: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from edge_run.runtime.bundle import payload

    def full(src: Path, dst: Path) -> str:
        dst.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(payload, "_copy_hashed", full)
    out = tmp_path / "deploy" / "b"
    r = cli("bundle", tiny_gguf, "--profile", "pi4-4gb", "--out", out)
    assert r.code == 4 and "disk full" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and not _leftovers(out.parent)


def test_bundle_a_fifo_says_what_it_is(cli, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.gguf")
    r = cli("bundle", tmp_path / "x.gguf", "--profile", "pi4-4gb", "--out", tmp_path / "b")
    assert r.code == 3 and "x.gguf is a FIFO" in r.stderr and "does not exist" not in r.stderr


def test_generated_files_hold_a_hostile_artifact_name_safely(tmp_path: Path) -> None:
    """The files a bundle writes, for a name edge-run would no longer accept but a renamed file can have."""
    from edge_run.core.quoting import sha256sums_name
    from edge_run.runtime.bundle.build import _sha256sums

    name = "it's $(touch MARK) %h\nExecStartPre=+/bin/sh.gguf".replace("MARK", str(tmp_path / "ran"))
    unit = render("edge-run.service", baseline_named("armv8-a"), "pi4-4gb", "3.13", name, "", 4, 2048)
    exec_lines = [ln for ln in unit.splitlines() if ln.startswith("ExecStart")]
    assert len(exec_lines) == 1 and exec_lines[0].startswith('ExecStart=@PREFIX@/venv/bin/edge-run serve "')
    assert "%h" not in unit.replace("%%", "") and "$(" not in exec_lines[0] and len(unit.splitlines()) == 21
    stage = tmp_path / "stage"
    (stage / "models").mkdir(parents=True)
    (stage / "models" / "a\\b.gguf").write_bytes(b"x")
    (stage / "install.sh").write_text("")
    lines = _sha256sums(stage).splitlines()
    assert [sha256sums_name(ln) for ln in lines] == ["models/a\\b.gguf"]
    check = subprocess.run(["sha256sum", "-c", "-"], input=_sha256sums(stage).encode(), cwd=stage,
                           capture_output=True)
    assert check.returncode == 0, check.stderr
    assert not (tmp_path / "ran").exists()
