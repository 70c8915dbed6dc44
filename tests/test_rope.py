"""The shared rope module against transformers' own rope initialisers (a reference we did not write): the
frequencies both converters bake in (GGUF as llama.cpp's divisors, ONNX as cos/sin caches) for llama3 and
longrope scaling, and the attention factor."""

from __future__ import annotations

import numpy as np
import pytest

from edge_run.converters.rope import RopeInputs, rope_plan

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192, "rope_theta": 500000.0}


def plain(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def test_llama3_frequencies_match_transformers() -> None:
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=16, max_position_embeddings=131072,
                                      rope_parameters=dict(LLAMA3))
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](config, None)
    cfg = config.to_dict()
    _, plan, theta = rope_plan(cfg, 128, ("llama3",), "test")
    assert plan is not None and theta == 500000.0
    ours = plain(theta, 128) / plan.short
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5)
    assert (plan.short > 1).any() and (plan.short == 1).any()  # both ends of the ramp are exercised


@pytest.mark.parametrize("seq_len", [100, 5000])
def test_longrope_frequencies_and_attention_factor_match_transformers(seq_len: int) -> None:
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    half = 48
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 4096,
            "short_factor": [1.0 + 0.01 * i for i in range(half)], "long_factor": [1.0 + 0.7 * i for i in range(half)]}
    config = transformers.Phi3Config(hidden_size=3072, num_attention_heads=32, max_position_embeddings=131072,
                                     original_max_position_embeddings=4096, rope_parameters=rope)
    ref, ref_scale = ROPE_INIT_FUNCTIONS["longrope"](config, None, seq_len=seq_len)
    _, plan, theta = rope_plan(config.to_dict(), 96, ("longrope",), "test")
    assert plan is not None and plan.long is not None and plan.switch_at == 4096
    divisors = plan.long if seq_len > plan.switch_at else plan.short
    np.testing.assert_allclose(plain(theta, 96) / divisors, ref.numpy(), rtol=1e-5)
    assert plan.mscale == pytest.approx(ref_scale, rel=1e-6)
    assert plan.mscale > 1.0  # 131072 / 4096: the factor is really applied


def test_longrope_with_a_wrong_number_of_factors_is_an_input_error() -> None:
    from edge_run.converters.rope import ROPE_VARIANTS
    from edge_run.core.errors import CheckpointError

    bad = {"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 8}
    with pytest.raises(CheckpointError, match="must list 8 numbers"):
        ROPE_VARIANTS["longrope"].plan(RopeInputs(10000.0, 16, bad, {"max_position_embeddings": 512}))
