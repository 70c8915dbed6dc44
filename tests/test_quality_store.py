"""The local quality store: round trip, concurrent writers, corrupt entries, invalid BPB, and how the
picker combines a model's anchor with short-slice measurements."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import pytest

from edge_run.core.errors import UsageError
from edge_run.runtime.eval.store import MAX_ENTRY_BYTES, QualityStore, StoreKey, nesting
from edge_run.runtime.pick.quality import reference_corpus_sha256, store_references


def key(quant: str = "Q8_0", chunks: int = 20, digest: str = "d1", ctx: int = 512) -> StoreKey:
    return StoreKey(digest, quant, "", reference_corpus_sha256(), ctx, chunks)


def entry(bpb: float, tokens: int = 1000, nbytes: int = 4000, chunks: int = 20) -> dict:
    return {"bpb": bpb, "tokens_scored": tokens, "bytes_scored": nbytes, "chunks": chunks, "ctx": 512}


def test_round_trip_and_replace(tmp_path: Path) -> None:
    store = QualityStore(tmp_path)
    store.put(key(), entry(1.2))
    assert store.get(key())["bpb"] == 1.2
    store.put(key(), entry(1.1))  # same key: the newer measurement replaces the older
    assert store.get(key())["bpb"] == 1.1
    assert store.get(key(chunks=4)) is None
    assert [s.key for s in store.entries("d1")] == [key()]
    assert store.entries("other") == [] and store.problems == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.5, "1.0", None, True])
def test_invalid_bpb_is_never_stored(tmp_path: Path, bad: object) -> None:
    store = QualityStore(tmp_path)
    with pytest.raises(UsageError, match="refusing to store a BPB"):
        store.put(key(), {"bpb": bad})
    assert not any(tmp_path.rglob("*.json"))


def _writer(root: str, worker: int, n: int) -> None:
    store = QualityStore(Path(root))
    for i in range(n):
        # every worker hammers one shared key and writes one key of its own
        store.put(key("Q4_K_M"), entry(1.0 + worker / 100 + i / 10000))
        store.put(key(f"Q{worker}", chunks=i % 3 + 1), entry(2.0 + worker))


def test_concurrent_writers_leave_whole_entries(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = QualityStore(tmp_path)
    found = store.entries("d1")
    assert store.problems == []
    assert len(found) == 1 + 4 * 3  # the shared key once, each worker's 3 chunk settings
    shared = store.get(key("Q4_K_M"))
    assert shared is not None and 1.0 <= shared["bpb"] < 1.05
    assert not list(tmp_path.rglob(".tmp-*"))  # no temp file left behind


def test_corrupt_entries_are_ignored_with_a_clear_message(tmp_path: Path) -> None:
    store = QualityStore(tmp_path)
    good = store.put(key(), entry(1.2))
    folder = good.parent
    (folder / ("0" * 32 + ".json")).write_text("{not json", encoding="utf-8")
    nan_key = key("Q2_K")
    (folder / nan_key.file_name()).write_text(
        json.dumps({"schema": 1, "key": nan_key.__dict__, "entry": {"bpb": math.nan}}), encoding="utf-8")
    neg_key = key("Q3_K_M")
    (folder / neg_key.file_name()).write_text(json.dumps({"schema": 1, "key": neg_key.__dict__,
                                                          "entry": {"bpb": -1.0}}), encoding="utf-8")
    moved = key("Q6_K")  # a valid entry under another key's file name
    (folder / key("Q5_K_M").file_name()).write_text(json.dumps({"schema": 1, "key": moved.__dict__,
                                                                "entry": {"bpb": 1.0}}), encoding="utf-8")
    (folder / key("Q4_0").file_name()).write_bytes(b"\xff\xfe\x00garbage")
    reader = QualityStore(tmp_path)
    assert [s.key.quant for s in reader.entries("d1")] == ["Q8_0"]
    assert len(reader.problems) == 5
    assert all("ignored a corrupt quality store entry" in p and "delete it" in p for p in reader.problems)
    assert any("not a finite non-negative number" in p for p in reader.problems)
    assert reader.get(nan_key) is None  # get() ignores it too
    # the next measurement of that key simply replaces the corrupt file
    reader.put(nan_key, entry(1.3))
    assert QualityStore(tmp_path).get(nan_key)["bpb"] == 1.3


def test_slice_measurements_are_placed_by_their_difference_with_the_anchor(tmp_path: Path) -> None:
    store = QualityStore(tmp_path)
    store.put(key("Q8_0", 20), entry(1.10, chunks=20))  # the model, on 20 chunks
    store.put(key("Q8_0", 4), entry(1.30, chunks=4))  # the anchor's type on the short slice
    store.put(key("Q4_K_M", 4), entry(1.33, chunks=4))  # a pairing on the same slice: +0.03
    store.put(key("Q2_K", 2), entry(1.50, chunks=2))  # no anchor run on 2 chunks: used as is
    store.put(key("Q6_K", 20, ctx=256), entry(0.1))  # other settings: not the picker's reference
    refs = dict(store_references(store, "d1"))
    assert sorted(refs) == ["Q2_K", "Q4_K_M", "Q8_0"]
    assert refs["Q8_0"]["bpb"] == 1.10
    assert refs["Q4_K_M"]["bpb"] == pytest.approx(1.13)
    assert "difference on 4" in refs["Q4_K_M"]["basis"]
    assert refs["Q2_K"]["bpb"] == 1.50


def test_pick_notes_a_corrupt_entry_and_still_picks(tiny_checkpoint, tmp_path: Path, cli, monkeypatch) -> None:
    import shutil

    from edge_run.converters.checkpoint import open_checkpoint

    monkeypatch.setenv("EDGE_RUN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_checkpoint("llama"), tmp_path / "models" / "tiny")
    digest = open_checkpoint(tmp_path / "models" / "tiny").digest()
    store = QualityStore.default()
    path = store.put(key("Q8_0", 20, digest=digest), entry(1.5))
    path.write_text("{truncated", encoding="utf-8")
    res = cli("pick", "--profile", "pi-3b", "--models", tmp_path / "models", "--ctx", "256", "--json")
    assert res.code == 0, res.stderr
    assert "ignored a corrupt quality store entry" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(res.stdout)["pick"]["quality"]["unmeasured"] is True


# ------------------------------------------------------------------ hostile entries: skipped, never read whole

def _hostile(folder: Path, name: str, kind: str) -> None:
    """Put ``kind`` under an entry's file name in ``folder``."""
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "symlink-to-entry":  # even a link to a good entry: the store never writes links
        path.symlink_to(next(folder.glob("*.json")))
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(1_500_000_000)  # sparse: 1.5 GB of size, no disk
    elif kind == "deep":
        path.write_text('{"schema": 1, "key": {}, "entry": {"bpb": 1, "x": ' + "[" * 20000 + "]" * 20000 + "}}",
                        encoding="utf-8")
    elif kind == "folder":
        path.mkdir()
    elif kind == "unreadable":
        path.write_text("{}", encoding="utf-8")
        path.chmod(0)


HOSTILE = {  # kind -> what the one-line note says
    "fifo": "a FIFO, not a regular file", "dev-zero": "a symlink, not a regular file",
    "symlink-loop": "a symlink, not a regular file", "symlink-to-entry": "a symlink, not a regular file",
    "huge": "1500000000 bytes, more than an entry can be",
    "deep": "nested 20002 deep, an entry nests at most", "folder": "a folder, not a regular file",
    "unreadable": "Permission denied",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_entries_are_skipped_with_one_line(kind: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = QualityStore(tmp_path)
    good = store.put(key(), entry(1.2))
    bad_key = key("Q4_K_M")
    _hostile(good.parent, bad_key.file_name(), kind)
    denied = [kind == "unreadable" and os.geteuid() == 0]  # root reads a mode-000 file: fail its open as for a user
    if denied[0]:
        real_open = os.open

        def no_access(path: str, *args: object, **kwargs: object) -> int:
            if denied[0] and str(path).endswith(bad_key.file_name()):
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", no_access)
    reader = QualityStore(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    assert [s.key.quant for s in reader.entries("d1")] == ["Q8_0"]  # the good entry is still used
    assert reader.get(bad_key) is None
    assert time.monotonic() - t0 < 5  # a FIFO would block forever
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: never read whole
    assert len(reader.problems) == 2 and len(set(reader.problems)) == 1  # entries() and get() say the same
    (note,) = set(reader.problems)
    assert "\n" not in note and HOSTILE[kind] in note, note
    assert note.startswith(f"ignored a corrupt quality store entry {good.parent / bad_key.file_name()} (")
    assert "delete it" in note
    # a new measurement of that key replaces whatever was there (a rename never follows the link or FIFO)
    denied[0] = False
    if kind != "folder":
        reader.put(bad_key, entry(1.3))
        assert QualityStore(tmp_path).get(bad_key)["bpb"] == 1.3
    assert Path("/dev/zero").exists() and not Path("/dev/zero").is_file()  # the link target was not replaced


def test_an_entry_that_grows_between_the_check_and_the_read_is_capped(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_run.runtime.eval.store as store_module

    store = QualityStore(tmp_path)
    path = store.put(key(), entry(1.2))
    path.write_bytes(b" " * (MAX_ENTRY_BYTES * 4))
    monkeypatch.setattr(store_module, "_check_stat", lambda st: None)  # as if it were small when checked
    reader = QualityStore(tmp_path)
    assert reader.entries("d1") == []
    assert "more than an entry can be" in reader.problems[0]


@pytest.mark.parametrize(("where", "value", "says"), [
    ("entry", {"tokens_scored": "many"}, "entry field tokens_scored is 'many'"),
    ("entry", {"chunks": 10**400}, "entry field chunks is"),  # an int no float holds
    ("entry", {"bytes_scored": math.inf}, "entry field bytes_scored is inf"),
    ("entry", {"corpus": ["a"]}, "entry field corpus is list"),
    ("entry", {"bpb": 10**400}, "is not a finite non-negative number"),
    ("key", {"ctx": "512"}, "key field ctx is str, not int"),
    ("key", {"chunks": True}, "key field chunks is bool, not int"),
    ("key", {"quant": None}, "key field quant is NoneType, not str"),
])
def test_fields_of_the_wrong_type_are_refused(where: str, value: dict, says: str, tmp_path: Path) -> None:
    """A file's name is a hash of its key, so a forged entry can carry any key under a matching name: every
    field the picker computes with must have its type, or pick would fail on it."""
    store = QualityStore(tmp_path)
    k = key("Q4_K_M")
    raw_key = {**k.__dict__, **(value if where == "key" else {})}
    raw_entry = {**entry(1.2), **(value if where == "entry" else {})}
    folder = store.put(key(), entry(1.1)).parent
    name = hashlib.sha256(json.dumps({f: v for f, v in raw_key.items() if f != "cache_type"},
                                     sort_keys=True).encode()).hexdigest()[:32] + ".json"
    (folder / name).write_text(json.dumps({"schema": 1, "key": raw_key, "entry": raw_entry}), encoding="utf-8")
    reader = QualityStore(tmp_path)
    assert [s.key.quant for s in reader.entries("d1")] == ["Q8_0"]
    assert len(reader.problems) == 1 and says in reader.problems[0], reader.problems


def test_nesting_ignores_brackets_in_strings() -> None:
    assert nesting('{"a": "[[[[{{{{\\"[[", "b": [[1]]}') == 3
    assert nesting("[]") == 1 and nesting("1") == 0


def test_pick_with_a_fifo_in_the_store_finishes(tiny_gguf: Path, tmp_path: Path) -> None:
    """End to end in a child with a timeout: `pick` reads the store of the artifact's checkpoint, where a FIFO
    sits under an entry's name; it notes the entry and picks (it used to wait forever for a writer)."""
    import shutil
    import subprocess
    import sys

    from edge_run.core.manifest import read_manifest

    models = tmp_path / "models"
    models.mkdir()
    for p in (tiny_gguf, tiny_gguf.with_name(tiny_gguf.name + ".manifest.json")):
        shutil.copy(p, models / p.name)
    manifest = read_manifest(tiny_gguf)
    assert manifest is not None
    cache = tmp_path / "cache"
    store = QualityStore(cache / "quality" / "v1")
    digest = manifest.source["digest"]
    fifo = store.put(key("Q8_0", 20, digest=digest), entry(1.5))
    fifo.unlink()
    os.mkfifo(fifo)
    res = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "pick", "--profile", "pi4-4gb", "--ctx", "256",
                          "--models", str(models), "--json"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EDGE_RUN_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    assert "a FIFO, not a regular file" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(res.stdout)["quality_store_notes"]
