"""The seed of one sampled position: any int64 seed, unrelated streams for neighbours."""

from __future__ import annotations

from flexmesh.meshcore.sampling import position_seed

SPLITMIX64_1234567 = (
    6457827717110365317,
    3203168211198807973,
    9817491932198370423,
    4593380528125082431,
    16408922859458223821,
)
"""The first outputs of the reference SplitMix64 (Vigna's splitmix64.c) seeded with 1234567,
as published on Rosetta Code ("Pseudo-random numbers/Splitmix64")."""


def test_neighbouring_seeds_and_positions_get_distinct_generator_seeds() -> None:
    seeds = [position_seed(s, p) for s in (-(2**63), -1, 0, 1, 2, 2**63 - 1) for p in range(500)]
    assert all(0 <= x < 2**64 for x in seeds)
    # torch's CPU generator keeps the low 32 bits of a seed: those must differ too.
    assert len({x & 0xFFFFFFFF for x in seeds}) == len(seeds)


def test_the_position_seed_is_splitmix64_of_seed_and_position() -> None:
    """Pinned to the reference generator's published outputs: its k-th output from state 1234567
    mixes `1234567 + k * golden_gamma`, which is seed k at position 1234566. Any change to the
    mix would give every seeded request other tokens than it got before (and than a worker on
    another version gives)."""
    assert tuple(position_seed(k, 1234566) for k in range(1, 6)) == SPLITMIX64_1234567
