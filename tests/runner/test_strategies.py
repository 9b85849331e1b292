"""PLD and draft-model speculation give exactly the plain greedy tokens, within batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import PROMPTS, hf_greedy, holds_nothing

NEW_TOKENS = 32


def _run(
    engine: Engine, prompts: list[list[int]], strategies: list[str]
) -> list[tuple[list[int], int, int, str]]:
    rids = [
        engine.add_request(
            prompt_token_ids=p, sampling=SamplingParams(max_tokens=NEW_TOKENS, strategy=s)
        )
        for p, s in zip(prompts, strategies, strict=True)
    ]
    got: dict[str, list[int]] = {r: [] for r in rids}
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id] += out.token_ids
            if out.finished:
                final[out.request_id] = out
    return [
        (got[r], final[r].draft_tokens_proposed, final[r].draft_tokens_accepted, final[r].strategy)
        for r in rids
    ]


@pytest.mark.parametrize("draft", [False, True])
def test_pld_and_spec_match_plain_greedy(model_path: str, models_dir: Path, draft: bool) -> None:
    draft_path = models_dir / "demo-small" if draft else None
    engine = Engine(
        model_path, EngineConfig(max_batched_tokens=128, num_draft_tokens=4), draft_path
    )
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    strategies = ["pld", "spec", "none", "pld", "spec"]
    results = _run(engine, prompts, strategies)
    for ids, strategy, (tokens, proposed, accepted, used) in zip(
        prompts, strategies, results, strict=True
    ):
        assert tokens == hf_greedy(model_path, tuple(ids), NEW_TOKENS), strategy
        expected = strategy if strategy != "spec" or draft else "none"
        assert used == expected
        assert 0 <= accepted <= proposed
        if expected != "none":
            assert proposed > 0, f"{strategy} proposed no drafts"
    assert holds_nothing(engine.scheduler)
    if engine.draft is not None:
        assert (
            engine.draft.pool.num_free == engine.draft.pool.num_blocks and not engine.draft.shadows
        )


def test_pld_on_repetitive_text_accepts_drafts(small_path: str) -> None:
    engine = Engine(small_path, EngineConfig(num_draft_tokens=4))
    ids = engine.tokenizer.encode(
        "for i in range(10):\n    print(i)\n" * 8, add_special_tokens=False
    )
    ((tokens, proposed, accepted, _),) = _run(engine, [ids], ["pld"])
    assert tokens == hf_greedy(small_path, tuple(ids), NEW_TOKENS)
    assert accepted > 0 and proposed >= accepted


def test_seeded_sampling_with_drafts_is_reproducible(small_path: str) -> None:
    engine = Engine(small_path, EngineConfig(num_draft_tokens=4))
    ids = engine.tokenizer.encode(PROMPTS[3], add_special_tokens=False)
    sp = SamplingParams(max_tokens=24, temperature=0.7, seed=3, strategy="pld")
    runs = []
    for _ in range(2):
        rid = engine.add_request(prompt_token_ids=ids, sampling=sp)
        out: list[int] = []
        while engine.has_unfinished():
            out += [t for o in engine.step() if o.request_id == rid for t in o.token_ids]
        runs.append(out)
    assert runs[0] == runs[1] and len(runs[0]) == 24
