"""Seeded sampling, stop conditions, aborts and input validation of the in-process engine."""

from __future__ import annotations

import math

import pytest

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import PROMPTS, hf_greedy, holds_nothing


@pytest.fixture(scope="module")
def engine(small_path: str) -> Engine:
    return Engine(small_path, EngineConfig(max_batched_tokens=64))


def _collect(engine: Engine) -> dict[str, tuple[list[int], str, str]]:
    res: dict[str, tuple[list[int], str, str]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            ids, text, _ = res.get(out.request_id, ([], "", ""))
            res[out.request_id] = (ids + list(out.token_ids), text + out.text, out.finish_reason)
    return res


def test_seeded_sampling_is_reproducible_across_batches(engine: Engine) -> None:
    sp = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    alone = engine.add_request(PROMPTS[0], sampling=sp)
    first = _collect(engine)[alone][0]
    crowd = [
        engine.add_request(p, sampling=SamplingParams(max_tokens=20, temperature=1.0))
        for p in PROMPTS[1:]
    ]
    again = engine.add_request(PROMPTS[0], sampling=sp)
    other = engine.add_request(
        PROMPTS[0], sampling=SamplingParams(max_tokens=20, temperature=1.0, seed=8)
    )
    res = _collect(engine)
    assert res[again][0] == first
    assert res[other][0] != first
    assert all(len(res[r][0]) == 20 or res[r][2] == "stop" for r in crowd)


def test_max_tokens_and_stop_token_ids_end_exactly(engine: Engine, small_path: str) -> None:
    ids = engine.tokenizer.encode(PROMPTS[3], add_special_tokens=False)
    ref = hf_greedy(small_path, tuple(ids), 24)
    stop_id = ref[10]
    cut = ref.index(stop_id) + 1
    a = engine.add_request(
        prompt_token_ids=ids, sampling=SamplingParams(max_tokens=24, stop_token_ids=(stop_id,))
    )
    b = engine.add_request(prompt_token_ids=ids, sampling=SamplingParams(max_tokens=7))
    res = _collect(engine)
    assert res[a][0] == ref[:cut] and res[a][2] == "stop"
    assert res[b][0] == ref[:7] and res[b][2] == "length"


def test_stop_string_truncates_text_before_it(engine: Engine, small_path: str) -> None:
    ids = engine.tokenizer.encode(PROMPTS[1], add_special_tokens=False)
    ref = hf_greedy(small_path, tuple(ids), 24)
    full = engine.tokenizer.decode(ref, skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), "need a visible stop string"
    rid = engine.add_request(
        prompt_token_ids=ids, sampling=SamplingParams(max_tokens=24, stop=(stop,))
    )
    tokens, text, reason = _collect(engine)[rid]
    assert reason == "stop"
    assert text == full[: full.index(stop)]
    assert tokens == ref[: len(tokens)] and len(tokens) < len(ref)


def test_abort_frees_every_block(engine: Engine) -> None:
    rids = [engine.add_request(p, sampling=SamplingParams(max_tokens=50)) for p in PROMPTS]
    engine.step()
    engine.step()
    assert engine.scheduler.pool.num_used > 0
    for r in rids:
        assert engine.abort(r)
    assert not engine.has_unfinished()
    assert holds_nothing(engine.scheduler)
    assert not engine.abort(rids[0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_raises_typed_error(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field and field in str(err.value)


def test_bad_prompts_raise_typed_error(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="prompt: is empty"):
        engine.add_request("")
    too_long = [5] * engine.max_model_len_tokens
    with pytest.raises(InvalidRequestError, match="context"):
        engine.add_request(prompt_token_ids=too_long)
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        engine.add_request(prompt_token_ids=[10**7])
    assert not engine.has_unfinished()
