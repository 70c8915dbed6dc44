"""ONNX int4 beyond round-to-nearest: the per-block scale search (search.py), calibration on a text that is
not the evaluation text with a numpy forward pass one layer at a time (calibrate.py, forward.py) and the
measured-sensitivity 8-bit mix under a size budget (mix.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_run.converters.architectures import lookup
from edge_run.converters.checkpoint import open_checkpoint
from edge_run.converters.onnx import search as search_module
from edge_run.converters.onnx.builder import Weights
from edge_run.converters.onnx.calibrate import DEFAULT_TEXT, Calibration, _OnlineKL, calibrate, unit_group
from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx
from edge_run.converters.onnx.forward import Forward
from edge_run.converters.onnx.hparams import decoder_config
from edge_run.converters.onnx.mix import packed_bytes, plan_mix
from edge_run.converters.onnx.quantize import SCHEMES, QuantConfig, dequantize_rows, quantize_rows
from edge_run.converters.onnx.search import search_rows
from edge_run.core.errors import CorpusError
from edge_run.core.fsutil import sha256_file
from edge_run.core.manifest import read_manifest
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import LoadOptions

from .test_logits_parity import PROMPTS

# the calibrated int4 tiny llama against its fp32 graph (measured: KL 0.04-0.09, RMS 0.24-0.35; RTN int4:
# KL 0.06-0.22, RMS 0.28-0.55). Tiny random matrices (64 columns) are far harder on 4 bits than real ones.
CALIBRATED_KL_BOUND = 0.15
CALIBRATED_RMS_BOUND = 0.45
OPTS = LoadOptions(n_ctx=256, n_threads=2)


def _weights(dist: str, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) if dist == "normal" else rng.standard_t(3, shape)
    return (0.02 * w).astype(np.float32)


def _block_errors(w: np.ndarray, q: tuple[np.ndarray, np.ndarray, np.ndarray], bits: int, block: int, symmetric: bool,
                  importance: np.ndarray | None = None) -> np.ndarray:
    packed, scales, zp = q
    d = dequantize_rows(packed, scales, None if symmetric else zp, bits, w.shape[1], block) - w
    weight = np.ones(w.shape[1], np.float32) if importance is None else importance
    return (weight * d * d).reshape(-1, block).sum(axis=1)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dist", ["normal", "heavy-tailed"])
@pytest.mark.parametrize("bits", [4, 8])
def test_search_is_never_worse_than_round_to_nearest(bits: int, dist: str, symmetric: bool) -> None:
    w = _weights(dist, (96, 320))
    rtn = _block_errors(w, quantize_rows(w, bits, 32, symmetric), bits, 32, symmetric)
    found = _block_errors(w, search_rows(w, bits, 32, symmetric), bits, 32, symmetric)
    assert (found <= rtn * (1 + 1e-5) + 1e-12).all()  # RTN is one of the candidates (float rounding aside)
    assert found.mean() < 0.95 * rtn.mean(), (found.mean(), rtn.mean())


def test_importance_weights_the_search() -> None:
    """With per-column importance the search lowers the importance-weighted error below the plain search's."""
    w = _weights("heavy-tailed", (64, 256), seed=1)
    importance = np.random.default_rng(2).gamma(0.5, 1.0, 256).astype(np.float32)
    plain = _block_errors(w, search_rows(w, 4, 32, False), 4, 32, False, importance)
    weighted = _block_errors(w, search_rows(w, 4, 32, False, importance), 4, 32, False, importance)
    assert weighted.mean() < 0.9 * plain.mean(), (weighted.mean(), plain.mean())


def test_search_bytes_do_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _weights("normal", (50, 200))  # 200 columns: the last block is padded
    importance = np.linspace(0.1, 2.0, 200, dtype=np.float32)
    first = search_rows(w, 4, 32, False, importance)
    monkeypatch.setattr(search_module, "SEARCH_CHUNK_ELEMENTS", 7 * 224)
    again = search_rows(w, 4, 32, False, importance)
    for a, b in zip(first, again, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3", "phi3", "phi3-long"])
def test_numpy_forward_matches_the_fp32_graph(arch: str, tiny_checkpoint: Callable[[str], Path],
                                              tmp_path: Path) -> None:
    """The calibration's layer-by-layer numpy decoder computes what the artifact's graph computes (biases,
    q/k norms, sandwich norms, an 8-token sliding window over 40 tokens, fused qkv, partial rotary)."""
    ckpt = tiny_checkpoint(arch)
    (art,) = convert_to_onnx(ckpt, tmp_path, OnnxOptions(quant="fp32", name=arch))
    c = open_checkpoint(ckpt)
    cfg = decoder_config(c, lookup(c.config)[1])
    w = Weights(c)
    w.split_fused(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab, 40)
    fwd = Forward(cfg, w, 64)
    h = fwd.embed(ids)
    for i in range(cfg.n_layers):
        h = fwd.layer(i, h, {r: np.ascontiguousarray(m.T) for r, m in fwd.layer_weights(i).items()})
    head = w.lm_head if w.lm_head is not None else w.get("embed_tokens.weight")
    ours = fwd.logits(fwd.final(h), np.ascontiguousarray(np.asarray(head.read_rows(0, head.shape[0])).T))
    with open_backend(art, OPTS) as b:
        ref = b.eval_logits([int(t) for t in ids])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_streamed_kl_equals_the_whole_vocabulary_kl() -> None:
    rng = np.random.default_rng(3)
    ref, other = rng.normal(0, 3, (2, 5, 1000))
    kl = _OnlineKL(5, ["x"])
    for a in range(0, 1000, 64):  # maxima grow chunk by chunk
        kl.add(np.sort(ref)[:, a:a + 64], {"x": np.sort(other)[:, a:a + 64]})

    def logp(z: np.ndarray) -> np.ndarray:
        return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)

    lr, lo = logp(np.sort(ref)), logp(np.sort(other))
    assert kl.result()["x"] == pytest.approx(float((np.exp(lr) * (lr - lo)).sum(-1).mean()), rel=1e-9)


def test_mix_spends_the_budget_on_loss_per_byte() -> None:
    q = QuantConfig(SCHEMES["int4"], 32, False)
    shapes = {"a": (256, 256), "b": (256, 256), "c": (1024, 256), "d": (256, 256)}
    sens = {"a": 0.01, "b": 0.03, "c": 0.05, "d": 0.0}
    narrow = sum(packed_bytes(q, 4, n, k) for n, k in shapes.values())
    extra = {u: packed_bytes(q, 8, n, k) - packed_bytes(q, 4, n, k) for u, (n, k) in shapes.items()}
    elements = sum(n * k for n, k in shapes.values())
    budget_bpw = 8 * (narrow + extra["b"] + extra["a"]) / elements
    plan = plan_mix(q, shapes, sens, budget_bpw)
    # c has the most loss but the least per byte; b then a fit; d costs nothing at 4 bits
    assert plan == {"a": 8, "b": 8, "c": 4, "d": 4}
    assert plan_mix(q, shapes, sens, 4.0) == dict.fromkeys(shapes, 4)
    assert plan_mix(q, shapes, sens, 16.0) == {"a": 8, "b": 8, "c": 8, "d": 4}


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx-quant")
    arts = convert_to_onnx(tiny_checkpoint("llama"), out, OnnxOptions(quant="fp32,int4-rtn,int4", name="llama"))
    return {a.name.split(".")[1].split("-b")[0]: a for a in arts}


def test_calibrated_conversion_is_deterministic(calibrated: dict[str, Path], tiny_checkpoint: Callable[[str], Path],
                                                tmp_path: Path) -> None:
    (again,) = convert_to_onnx(tiny_checkpoint("llama"), tmp_path, OnnxOptions(quant="int4", name="llama"))
    for name in ("model.onnx", "model.onnx.data"):
        assert sha256_file(again / name) == sha256_file(calibrated["int4"] / name), name
    extra = read_manifest(again).extra
    assert extra["calibration"]["text"] == DEFAULT_TEXT.name == "tinyshakespeare.txt"
    assert extra["calibration"]["int8"]  # the budget bought 8 bits for the most sensitive matrices
    assert set(extra["linear_bits"]) == {"int4", "int8"}


def _kl(got: np.ndarray, ref: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(got)), nats."""
    def logp(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lr, lg = logp(ref.astype(np.float64)), logp(got.astype(np.float64))
    return float((np.exp(lr) * (lr - lg)).sum(axis=-1).mean())


def test_calibrated_logits_stay_close_to_fp32(calibrated: dict[str, Path]) -> None:
    """Bounds on the tiny random llama (int8 activations, accuracy level 4): KL from the fp32 graph's
    distribution <= CALIBRATED_KL_BOUND per token, ||logits - fp32|| / ||fp32 - row mean|| <= CALIBRATED_RMS_BOUND,
    on every prompt; and a lower KL than round-to-nearest int4 on average."""
    kl: dict[str, list[float]] = {"int4": [], "int4-rtn": []}
    rms: dict[str, list[float]] = {"int4": [], "int4-rtn": []}
    with open_backend(calibrated["fp32"], OPTS) as ref_b:
        refs = [ref_b.eval_logits(ids) for ids in PROMPTS]
    for scheme in kl:
        with open_backend(calibrated[scheme], OPTS) as b:
            for ids, ref in zip(PROMPTS, refs, strict=True):
                got = b.eval_logits(ids)
                kl[scheme].append(_kl(got, ref))
                rms[scheme].append(float(np.linalg.norm(got - ref) / np.linalg.norm(ref - ref.mean(-1, keepdims=True))))
    assert max(kl["int4"]) < CALIBRATED_KL_BOUND, kl
    assert max(rms["int4"]) < CALIBRATED_RMS_BOUND, rms
    assert np.mean(kl["int4"]) < 0.8 * np.mean(kl["int4-rtn"]), kl


def test_calibrated_artifact_opens_in_onnxruntime_genai(calibrated: dict[str, Path]) -> None:
    """onnxruntime-genai loads the mixed 4/8-bit artifact (8-bit blocks of another size) and decodes greedily
    as edge-run's backend does."""
    import onnxruntime_genai as og

    art = calibrated["int4"]
    prompt = PROMPTS[0][:16]
    with open_backend(art, OPTS) as b:
        ours = list(prompt)
        for _ in range(6):
            ours.append(int(b.eval_logits(ours)[-1].argmax()))
    model = og.Model(str(art))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 6, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    tokens: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    assert tokens == ours[len(prompt):]


def test_unreadable_calibration_text_fails_cleanly(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match="calibration text"):
        convert_to_onnx(tiny_checkpoint("llama"), out, OnnxOptions(quant="int4", name="m",
                                                                   calibration_text=tmp_path / "missing.txt"))
    assert not out.exists() or not any(out.iterdir())


def test_sensitivity_shares_each_groups_measured_kl(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """phi3 (untied embedding, fused qkv): every unit has a 4-bit result and a share of its group's KL; the
    shares of a group add up to the group's measurement."""
    c = open_checkpoint(tiny_checkpoint("phi3"))
    cfg = decoder_config(c, lookup(c.config)[1])
    quant = QuantConfig(SCHEMES["int4"], 32, False)
    cal: Calibration = calibrate(c, cfg, quant, tmp_path)
    assert "model.embed_tokens" in cal.groups and "lm_head" in cal.groups
    assert set(cal.sensitivity) == set(cal.shapes) == set(cal.packed)
    assert all(p.exists() for p in cal.packed.values())
    assert all(v > 0 for v in cal.groups.values()), cal.groups
    for grp, kl in cal.groups.items():
        shares = [v for k, v in cal.sensitivity.items() if unit_group(k, cfg.n_layers) == grp]
        assert sum(shares) == pytest.approx(kl, rel=1e-9), grp


def test_mixed_units_are_the_graphs_matrices(calibrated: dict[str, Path]) -> None:
    """The calibration's unit keys are the builder's: every matrix the mix gave 8 bits is an 8-bit initializer."""
    import onnx

    art = calibrated["int4"]
    names = {t.name for t in onnx.load(str(art / "model.onnx"), load_external_data=False).graph.initializer}
    int8 = read_manifest(art).extra["calibration"]["int8"]
    assert int8 and all(f"{k}.weight_Q8" in names for k in int8), int8
    assert sum(n.endswith(".weight_Q4") for n in names) > 0
