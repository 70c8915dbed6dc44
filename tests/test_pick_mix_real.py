"""The tensor-type mix the quant-loss prediction uses (src/edge_run/runtime/estimate/quant_mix.py) against real
llama.cpp files: the
k-quant types whose fallbacks on SmolLM2's 576-wide rows decide its predicted loss (Q2_K / Q3_K -> Q4_0,
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.runtime.estimate.gguf import shape_from_gguf
from edge_run.runtime.pick.quant_loss import mix_of, retyped


@pytest.mark.zoo
@pytest.mark.parametrize("quant", ["Q2_K", "Q3_K_M", "Q5_K_M"])
def test_predicted_mix_is_the_real_files(quant: str, zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    real = shape_from_gguf(zoo_gguf_dir("smollm2-135m", quant))
    types = {t.name: t.type for t in retyped(real, quant) if t.ne1 > 1}
    assert types == {t.name: t.type for t in real.tensors if t.ne1 > 1}
    shares = mix_of(real.tensors).shares
    fallback = {"Q2_K": "Q4_0", "Q3_K_M": "Q4_0", "Q5_K_M": "Q5_1"}[quant]
    assert shares[fallback] > 0.6  # most block weights are 576-wide rows: the fallback type, not the k-quant
