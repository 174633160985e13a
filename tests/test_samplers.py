"""PKBatchSampler (official RandomIdentitySampler semantics) and ShuffledBatchSampler (pair pretraining)."""
from __future__ import annotations

from collections import Counter

import pytest

from datasets.pairs import ShuffledBatchSampler
from datasets.samplers import PKBatchSampler
from utils.errors import ShipReIDError

OPT, SAR = 0, 1


def make_set(spec: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """spec[i] = (optical count, SAR count) of identity 10 + i (labels need not start at 0).

    Images are laid out identity by identity, optical first."""
    labels, modalities = [], []
    for i, (n_opt, n_sar) in enumerate(spec):
        labels += [10 + i] * (n_opt + n_sar)
        modalities += [OPT] * n_opt + [SAR] * n_sar
    return labels, modalities


# 10 identities with 1..12 images and mixed modalities. With K = 4 the number of groups per identity is
# max(1, n // 4): n = 1, 2, 3, 4, 5, 7, 2 -> 1 group; n = 8, 9 -> 2 groups; n = 12 -> 3 groups.
SPEC = [(1, 0), (1, 1), (2, 1), (2, 2), (0, 5), (4, 3), (4, 4), (5, 4), (6, 6), (2, 0)]
LABELS, MODALITIES = make_set(SPEC)
COUNTS = Counter(LABELS)
K = 4


def batches_of(sampler: PKBatchSampler) -> list[list[tuple[int, tuple]]]:
    return list(sampler)


def indices(batch) -> list[int]:
    return [index for index, _ in batch]


def groups_expected(n: int, k: int = K) -> int:
    return max(1, n // k)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [8, 16])
def test_pk_batches_hold_p_identities_with_k_images_each(seed, batch_size):
    p = batch_size // K
    sampler = PKBatchSampler(LABELS, MODALITIES, batch_size, K, seed=seed)
    sampler.set_epoch(2)
    batches = batches_of(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == batch_size
        per_label = Counter(LABELS[i] for i in indices(batch))  # duplicates of up-sampled ids counted
        assert len(per_label) == p
        assert set(per_label.values()) == {K}
        # a batch is P whole groups of K, one identity after the other
        for g in range(p):
            assert len({LABELS[i] for i in indices(batch)[g * K:(g + 1) * K]}) == 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch_size", [8, 12, 16])
def test_pk_epoch_uses_groups_until_fewer_than_p_identities_remain(seed, batch_size):
    """Identity i has g_i = max(1, n_i // K) groups. It appears in at most g_i batches (at most once per
    batch), and when the epoch ends fewer than P identities still hold an unused group."""
    p = batch_size // K
    sampler = PKBatchSampler(LABELS, MODALITIES, batch_size, K, seed=seed)
    sampler.set_epoch(seed + 1)
    batches = batches_of(sampler)
    appearances = Counter(LABELS[indices(b)[g * K]] for b in batches for g in range(p))
    groups = {pid: groups_expected(n) for pid, n in COUNTS.items()}
    assert all(appearances[pid] <= groups[pid] for pid in groups)
    left_over = [pid for pid in groups if appearances[pid] < groups[pid]]
    assert len(left_over) < p
    assert len(batches) * p == sum(appearances.values())
    # every image of an identity with >= K images is used at most once per epoch (no up-sampling there)
    used = Counter(i for b in batches for i in indices(b))
    assert all(c == 1 for i, c in used.items() if COUNTS[LABELS[i]] >= K)
    # an identity with < K images is up-sampled with replacement to exactly K (so it has duplicates)
    for b in batches:
        for g in range(p):
            group = indices(b)[g * K:(g + 1) * K]
            n = COUNTS[LABELS[group[0]]]
            if n < K:
                assert len(set(group)) <= n


def test_pk_one_group_per_identity_visits_all_but_the_remainder():
    # 11 identities of 1..3 images (one group each), P = 3: floor(11 / 3) = 3 batches cover 9 identities
    # and exactly 11 - 9 = 2 are left over
    labels, modalities = make_set([(1 + i % 3, 0) for i in range(11)])
    sampler = PKBatchSampler(labels, modalities, 12, K, seed=5)
    batches = batches_of(sampler)
    assert len(batches) == 3
    seen = [labels[i] for b in batches for i in indices(b)]
    assert len(set(seen)) == 9
    # with a multiple of P identities (12 = 4 x 3) every identity is visited exactly once
    labels, modalities = make_set([(1 + i % 3, 0) for i in range(12)])
    batches = batches_of(PKBatchSampler(labels, modalities, 12, K, seed=5))
    assert len(batches) == 4
    assert Counter(labels[i] for b in batches for i in indices(b)) == {10 + i: K for i in range(12)}


def test_pk_is_deterministic_per_seed_and_epoch():
    def run(seed, epoch):
        s = PKBatchSampler(LABELS, MODALITIES, 8, K, seed=seed)
        s.set_epoch(epoch)
        return batches_of(s)

    assert run(7, 3) == run(7, 3)
    assert indices_all(run(7, 3)) != indices_all(run(7, 4))
    assert indices_all(run(7, 3)) != indices_all(run(8, 3))
    # re-iterating the same sampler object gives the same epoch again
    s = PKBatchSampler(LABELS, MODALITIES, 8, K, seed=7)
    s.set_epoch(3)
    assert batches_of(s) == batches_of(s) == run(7, 3)


def indices_all(batches) -> list[list[int]]:
    return [indices(b) for b in batches]


def test_pk_items_carry_unique_global_seed_tuples():
    s = PKBatchSampler(LABELS, MODALITIES, 16, K, seed=9)
    s.set_epoch(4)
    batches = batches_of(s)
    seeds = [seed for b in batches for _, seed in b]
    assert len(seeds) == len(set(seeds)) == 16 * len(batches)
    for number, b in enumerate(batches):
        assert [seed for _, seed in b] == [(9, 4, number, slot) for slot in range(16)]
        assert all(isinstance(i, int) for i in indices(b))


def test_pk_skip_batches_resumes_inside_the_epoch():
    full = PKBatchSampler(LABELS, MODALITIES, 8, K, seed=3)
    full.set_epoch(6)
    all_batches = batches_of(full)
    assert len(all_batches) >= 4
    for n in (0, 1, 3, len(all_batches)):
        resumed = PKBatchSampler(LABELS, MODALITIES, 8, K, seed=3)
        resumed.set_epoch(6, skip_batches=n)
        assert len(resumed) == len(all_batches) - n
        assert batches_of(resumed) == all_batches[n:]  # same indices and same seed tuples
    # set_epoch again without skip resets it
    resumed.set_epoch(6)
    assert batches_of(resumed) == all_batches


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("epoch", [0, 5])
def test_pk_ddp_ranks_slice_the_global_batch(world, epoch):
    batch_size = 16  # P = 4 identities
    single = PKBatchSampler(LABELS, MODALITIES, batch_size, K, seed=11)
    single.set_epoch(epoch)
    global_batches = batches_of(single)
    per_rank = []
    for rank in range(world):
        s = PKBatchSampler(LABELS, MODALITIES, batch_size, K, seed=11, rank=rank, world_size=world)
        s.set_epoch(epoch)
        per_rank.append(batches_of(s))
        assert len(s) == len(global_batches)
    assert all(len(b) == len(global_batches) for b in per_rank)
    for number, whole in enumerate(global_batches):
        joined = [item for rank in range(world) for item in per_rank[rank][number]]
        assert joined == whole  # indices and (global-slot) seed tuples
        for rank in range(world):
            part = per_rank[rank][number]
            assert len(part) == (4 // world) * K
            counts = Counter(LABELS[i] for i in indices(part))
            assert len(counts) == 4 // world and set(counts.values()) == {K}  # whole identities


# modality-balanced: K = 4, half = 2
MODAL_SPEC = [(2, 2), (3, 5), (4, 4), (0, 5), (6, 0), (1, 3), (2, 6), (5, 2)]
MODAL_LABELS, MODAL_MODALITIES = make_set(MODAL_SPEC)


@pytest.mark.parametrize("epoch", range(4))
def test_pk_modality_balanced_groups(epoch):
    s = PKBatchSampler(MODAL_LABELS, MODAL_MODALITIES, 8, K, seed=2, modality_balanced=True)
    s.set_epoch(epoch)
    batches = batches_of(s)
    assert batches
    seen = set()
    for b in batches:
        for g in range(2):
            group = indices(b)[g * K:(g + 1) * K]
            pid = MODAL_LABELS[group[0]]
            seen.add(pid)
            assert {MODAL_LABELS[i] for i in group} == {pid}
            n_opt, n_sar = MODAL_SPEC[pid - 10]
            mods = [MODAL_MODALITIES[i] for i in group]
            if n_opt and n_sar:
                # K/2 optical then K/2 SAR (the single optical image of (1, 3) is up-sampled to 2)
                assert mods == [OPT, OPT, SAR, SAR]
                if n_opt >= 2 and n_sar >= 2:
                    assert len(set(group)) == K
            else:
                # single-modality identity: a plain group of K images of its one modality
                assert set(mods) == {OPT if n_opt else SAR}
                assert len(set(group)) == K  # 5 and 6 images: no up-sampling
    # groups per identity: min(n_opt // 2, n_sar // 2) (>= 1 after up-sampling) or n // 4 -> 8 ids, P = 2
    # every id has >= 1 group, so at least 8 / 2 = 4 batches
    assert len(batches) >= 4


def test_pk_plain_mode_ignores_modality_balance():
    # in plain mode an identity with 4 optical + 4 SAR images is shuffled as one list of 8 and cut into
    # groups of 4, so over several epochs some group is not 2 optical + 2 SAR
    labels, modalities = make_set([(4, 4), (4, 4)])
    unbalanced = 0
    for epoch in range(10):
        s = PKBatchSampler(labels, modalities, 8, K, seed=0)
        s.set_epoch(epoch)
        for b in s:
            for g in range(2):
                mods = [modalities[i] for i in indices(b)[g * K:(g + 1) * K]]
                unbalanced += mods.count(OPT) != 2
    assert unbalanced > 0


def test_pk_errors():
    with pytest.raises(ShipReIDError, match=r"IMS_PER_BATCH 30 .*NUM_INSTANCE 4 images over 1 rank.*multiple of 4, "
                                            r"e\.g\. SOLVER\.IMS_PER_BATCH 32"):
        PKBatchSampler(LABELS, MODALITIES, 30, K)  # 30 % 4 != 0
    # P = 4 over 3 ranks: 12 images a rank-multiple; 24 is the next batch that works
    with pytest.raises(ShipReIDError, match=r"over 3 rank\(s\): it must be a multiple of 12, e\.g\. SOLVER\.IMS_PER_BATCH 24"):
        PKBatchSampler(LABELS, MODALITIES, 16, K, world_size=3)
    with pytest.raises(ShipReIDError, match="even"):
        PKBatchSampler(LABELS, MODALITIES, 9, 3, modality_balanced=True)  # odd K
    with pytest.raises(ShipReIDError, match="10 identities"):
        PKBatchSampler(LABELS, MODALITIES, 44, K)  # P = 11 > 10 identities
    # exactly P identities is enough: one batch
    assert len(PKBatchSampler(LABELS, MODALITIES, 40, K)) == 1


# ----------------------------------------------------------------------------- ShuffledBatchSampler

@pytest.mark.parametrize("num_items,batch", [(23, 4), (24, 4), (10, 10), (37, 6)])
def test_shuffled_batches_are_a_partial_permutation(num_items, batch):
    s = ShuffledBatchSampler(num_items, batch, seed=4)
    s.set_epoch(1)
    batches = list(s)
    assert len(batches) == len(s) == num_items // batch
    flat = [i for b in batches for i, _ in b]
    assert len(flat) == (num_items // batch) * batch
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(num_items))
    seeds = [seed for b in batches for _, seed in b]
    assert seeds == [(4, 1, n, slot) for n in range(len(batches)) for slot in range(batch)]
    # deterministic per (seed, epoch); another epoch reshuffles
    again = ShuffledBatchSampler(num_items, batch, seed=4)
    again.set_epoch(1)
    assert list(again) == batches
    again.set_epoch(2)
    assert [i for b in again for i, _ in b] != flat


def test_shuffled_batches_ddp_slices_and_skip():
    whole = ShuffledBatchSampler(50, 8, seed=1)
    whole.set_epoch(3)
    global_batches = list(whole)
    ranks = []
    for rank in range(4):
        s = ShuffledBatchSampler(50, 8, seed=1, rank=rank, world_size=4)
        s.set_epoch(3)
        ranks.append(list(s))
    assert all(len(r) == len(global_batches) == 6 for r in ranks)
    for n, b in enumerate(global_batches):
        assert [item for r in ranks for item in r[n]] == b
        assert all(len(r[n]) == 2 for r in ranks)
    skip = ShuffledBatchSampler(50, 8, seed=1)
    skip.set_epoch(3, skip_batches=2)
    assert len(skip) == 4 and list(skip) == global_batches[2:]


def test_shuffled_batches_errors():
    with pytest.raises(ShipReIDError, match="cannot be split over 3"):
        ShuffledBatchSampler(50, 8, world_size=3)
    with pytest.raises(ShipReIDError, match="fewer than one batch"):
        ShuffledBatchSampler(7, 8)
