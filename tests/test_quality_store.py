"""The local quality store: round trip, concurrent writers, corrupt entries, invalid BPB, and how the
picker combines a model's anchor with short-slice measurements."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path

import pytest

from edge_run.core.errors import UsageError
from edge_run.runtime.eval.store import QualityStore, StoreKey
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
