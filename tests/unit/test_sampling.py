"""The seed of one sampled position: any int64 seed, unrelated streams for neighbours."""

from __future__ import annotations

from flexmesh.meshcore.sampling import position_seed


def test_neighbouring_seeds_and_positions_get_distinct_generator_seeds() -> None:
    seeds = [position_seed(s, p) for s in (-(2**63), -1, 0, 1, 2, 2**63 - 1) for p in range(500)]
    assert all(0 <= x < 2**64 for x in seeds)
    # torch's CPU generator keeps the low 32 bits of a seed: those must differ too.
    assert len({x & 0xFFFFFFFF for x in seeds}) == len(seeds)
    assert position_seed(7, 3) == position_seed(7, 3)
