"""Speculative decoding by prompt lookup (--draft ngram, runtime/backends/speculative.py): the n-gram index,
the adaptive draft length, and on the real SmolLM2-135M and Gemma3-270M greedy output identical to plain
decoding, token for token, in run's loop and in serve's batch engine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import GenerationParams, LoadOptions
from edge_run.runtime.backends.batch import BatchEngine
from edge_run.runtime.backends.speculative import (
    COOL_DOWN,
    MAX_DRAFT,
    START_DRAFT,
    DraftControl,
    NgramIndex,
    verify,
)

from .serve_util import REPO
from .test_batching import Collect, assert_equal_but_near_ties, run_engine

PASSAGE = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
           "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
           "Locally nicknamed La dame de fer, it was constructed as the centrepiece of the 1889 World's Fair.")
GROUNDED = f"Passage: {PASSAGE}\n\nThe passage again, word for word: The Eiffel Tower is"
OPEN = "Once upon a time, in a small village by the sea, there lived"


def test_index_drafts_what_followed_the_last_ngram() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3])
    assert index.draft(3) == [4, 5, 9]  # "2 3" occurred before, followed by 4 5 9
    assert index.draft(0) == []
    index.append(7)  # "3 7" never occurred
    assert index.draft(4) == []
    longest = NgramIndex([5, 2, 3, 8, 1, 2, 3, 6, 1, 2, 3])
    assert longest.draft(1) == [6]  # "1 2 3" (the longest match) over "2 3"'s latest occurrence
    assert NgramIndex([1]).draft(4) == []


def test_control_grows_shrinks_and_cools_down() -> None:
    c = DraftControl()
    assert c.length() == START_DRAFT
    c.update(START_DRAFT, START_DRAFT)
    assert c.length() == 2 * START_DRAFT
    for _ in range(4):
        c.update(c.k, c.k)
    assert c.length() == MAX_DRAFT
    c.update(MAX_DRAFT, 2)
    assert c.length() == 3
    for _ in range(8):  # nothing kept: drafting stops for a cool-down, then probes again
        c.update(c.k, 0)
        if c.idle:
            break
    assert [c.length() for _ in range(COOL_DOWN)] == [0] * COOL_DOWN
    assert c.length() == START_DRAFT
    c.update(START_DRAFT, 0)
    while not c.idle:
        c.update(c.k, 0)
    assert c.idle == 2 * COOL_DOWN  # a second cool-down lasts twice as long
    assert c.drafted > c.accepted > 0


def test_verify_keeps_drafts_while_they_match() -> None:
    answers = {0: 7, 1: 8, 2: 5, 3: 6}
    assert verify(answers.__getitem__, [0, 1, 2, 3], [7, 8, 9]) == [7, 8, 5]
    assert verify(answers.__getitem__, [0], []) == [7]
    assert verify({0: 7, 1: 8, 2: 9}.__getitem__, [0, 1, 2], [7, 8]) == [7, 8, 9]  # all kept + the next


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def zoo_model(request: pytest.FixtureRequest, zoo_gguf_dir: Callable[[str, str], Path]) -> Path:
    return zoo_gguf_dir(request.param, "q8_0")


def generate(path: Path, prompt: str, draft: str, params: GenerationParams) -> tuple[list[int], int, int]:
    with open_backend(path, LoadOptions(n_ctx=1024, n_threads=2, draft=draft)) as b:
        tokens = []
        for t in b.token_stream(b.tokenize(prompt), params):
            if b.is_eog(t) or len(tokens) >= params.max_tokens:
                break
            tokens.append(t)
        drafted, accepted = b.draft_counts()  # type: ignore[attr-defined]
        return tokens, drafted, accepted


@pytest.mark.zoo
def test_greedy_output_is_identical_with_drafts(zoo_model: Path) -> None:
    params = GenerationParams(max_tokens=48)
    plain, _, _ = generate(zoo_model, GROUNDED, "", params)
    drafted, n_drafted, n_accepted = generate(zoo_model, GROUNDED, "ngram", params)
    assert drafted == plain
    assert n_accepted >= len(plain) // 3, (n_drafted, n_accepted)  # the passage is repeated: most drafts hold
    plain_open, _, _ = generate(zoo_model, OPEN, "", params)
    assert generate(zoo_model, OPEN, "ngram", params)[0] == plain_open


@pytest.mark.zoo
def test_batched_slots_draft_too(zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    path = zoo_gguf_dir("smollm2-135m", "q8_0")
    params = GenerationParams(max_tokens=40)
    prompts_text = [GROUNDED, OPEN, GROUNDED.replace("Eiffel", "Blackpool")]
    out = {}
    for draft in ("", "ngram"):
        with open_backend(path, LoadOptions(n_ctx=512, n_threads=2, n_seq=3, draft=draft)) as b:
            engine = BatchEngine(b)
            prompts = [b.tokenize(p) for p in prompts_text]
            out[draft] = [c.tokens for c in run_engine(engine, prompts, params)]
            counts = (engine.drafted, engine.accepted)
            engine.close()
    # a slot's rows share each batch with the other slots' drafts: the kernels may sum in another order
    assert_equal_but_near_ties(path, prompts, out["ngram"], out[""])
    assert out["ngram"][0] == out[""][0]
    assert counts[1] > 20, counts


@pytest.mark.zoo
def test_sampling_with_drafts_is_seeded(zoo_gguf_dir: Callable[[str, str], Path]) -> None:
    path = zoo_gguf_dir("smollm2-135m", "q8_0")
    params = GenerationParams(max_tokens=24, temperature=0.8, seed=7)
    with open_backend(path, LoadOptions(n_ctx=512, n_threads=2, n_seq=2, draft="ngram")) as b:
        engine = BatchEngine(b)
        first = run_engine(engine, [b.tokenize(GROUNDED)], params)[0]
        again = run_engine(engine, [b.tokenize(GROUNDED)], params, [Collect()])[0]
        engine.close()
    assert first.tokens == again.tokens and len(first.tokens) > 0
    assert engine.drafted > 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_run.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_run_with_a_draft_prints_the_same_text(tiny_gguf: Path) -> None:
    prompt = "a b c d a b c d a b c d a b"
    plain = cli("run", str(tiny_gguf), "-p", prompt, "-n", "24", "--temp", "0")
    drafted = cli("run", str(tiny_gguf), "-p", prompt, "-n", "24", "--temp", "0", "--draft", "ngram")
    assert plain.returncode == drafted.returncode == 0, drafted.stderr
    assert drafted.stdout == plain.stdout


@pytest.mark.parametrize(("args", "words"), [(["--draft", "model.gguf"], "unknown --draft"),
                                             (["--draft", "NGRAM"], "unknown --draft")])
def test_bad_draft_is_one_line_exit_2(tiny_gguf: Path, args: list[str], words: str) -> None:
    res = cli("run", str(tiny_gguf), "-p", "hi", "-n", "2", *args)
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_draft_on_onnx_is_refused(tmp_path: Path) -> None:
    from edge_run.core.errors import UsageError
    from edge_run.runtime.backends.speculative import check_draft

    with pytest.raises(UsageError, match="needs a GGUF artifact"):
        check_draft("ngram", "onnx")
