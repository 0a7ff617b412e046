"""Cluster scores of a categorical code against labels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmistudy.latents import DiagonalGaussian
from vmistudy.metrics import (accuracy_hungarian, accuracy_majority, cluster_log_var, cluster_scores, consensus,
                              contingency, kmeans,
                              matched, mutual_information, nmi, one_hot_sample, seed_agreement)


def _labels(rng, n=2000, k=10):
    return rng.integers(0, k, n)


def test_contingency_shape_and_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    clusters = np.array([1, 1, 0, 3, 3, 1])
    counts = contingency(labels, clusters)
    assert counts.shape == (3, 4)
    expected = np.zeros((3, 4), dtype=np.int64)
    expected[0, 1], expected[1, 0], expected[2, 3], expected[2, 1] = 2, 1, 2, 1
    assert np.array_equal(counts, expected)
    assert counts.sum() == len(labels)
    rng = np.random.default_rng(0)
    labels, clusters = _labels(rng), rng.integers(0, 7, 2000)
    counts = contingency(labels, clusters)
    assert counts.shape == (10, 7)
    for i, j in [(0, 0), (3, 6), (9, 2)]:
        assert counts[i, j] == np.sum((labels == i) & (clusters == j))


@pytest.mark.parametrize("seed", range(5))
def test_permuted_labelling_scores_one(seed):
    rng = np.random.default_rng(seed)
    labels = _labels(rng)
    perm = rng.permutation(10)
    clusters = perm[labels]
    assert accuracy_hungarian(labels, clusters) == 1.0
    assert accuracy_majority(labels, clusters) == 1.0
    assert nmi(labels, clusters) == pytest.approx(1.0, abs=1e-12)
    # plain floats: scores go into checkpoints that load with weights_only=True
    assert all(type(f(labels, clusters)) is float for f in (accuracy_hungarian, accuracy_majority, nmi))


def test_partly_wrong_labelling_is_scored_exactly():
    labels = np.repeat(np.arange(4), 25)
    clusters = (labels + 1) % 4  # a permutation ...
    clusters[:10] = 2  # ... with 10 of the 25 class-0 images moved from cluster 1 to cluster 2
    assert accuracy_hungarian(labels, clusters) == pytest.approx(0.9)
    assert accuracy_majority(labels, clusters) == pytest.approx(0.9)
    # two clusters for one class: majority counts both, one-to-one matching only one
    labels = np.array([0, 0, 0, 0, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2])
    assert accuracy_majority(labels, clusters) == 1.0
    assert accuracy_hungarian(labels, clusters) == pytest.approx(4 / 6)


@pytest.mark.parametrize("seed", range(3))
def test_random_labelling_is_near_chance(seed):
    rng = np.random.default_rng(seed)
    labels, clusters = _labels(rng, n=20_000), _labels(rng, n=20_000)
    acc = accuracy_hungarian(labels, clusters)
    assert 0.1 <= acc < 0.13  # chance is 0.1; the best matching of noise adds a little
    assert nmi(labels, clusters) < 0.005


@pytest.mark.parametrize("seed", range(20))
def test_majority_is_at_least_hungarian(seed):
    rng = np.random.default_rng(100 + seed)
    n, k, m = rng.integers(20, 500), rng.integers(2, 12), rng.integers(1, 15)
    labels = rng.integers(0, k, n)
    # clusters partly informative, partly noise, with any number of clusters
    clusters = np.where(rng.random(n) < rng.random(), labels % m, rng.integers(0, m, n))
    hung, major = accuracy_hungarian(labels, clusters), accuracy_majority(labels, clusters)
    assert 0 < hung <= major + 1e-12 <= 1 + 1e-12


@pytest.mark.parametrize("seed", range(20))
def test_nmi_equals_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(200 + seed)
    n, k, m = rng.integers(10, 3000), rng.integers(2, 12), rng.integers(2, 15)
    labels = rng.integers(0, k, n)
    clusters = np.where(rng.random(n) < rng.random(), labels % m, rng.integers(0, m, n))
    ours = nmi(labels, clusters)
    ref = metrics.normalized_mutual_info_score(labels, clusters)
    assert ours == pytest.approx(ref, abs=1e-10)


def test_nmi_equals_sklearn_in_degenerate_cases():
    metrics = pytest.importorskip("sklearn.metrics")
    cases = [(np.array([0, 1, 2, 0, 1]), np.zeros(5, dtype=int)),  # one cluster
             (np.array([3, 3, 3, 3]), np.array([0, 1, 0, 1]))]      # one label
    for labels, clusters in cases:
        assert nmi(labels, clusters) == pytest.approx(metrics.normalized_mutual_info_score(labels, clusters),
                                                      abs=1e-12)


def test_cluster_scores_from_tensors():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clusters = torch.tensor([5, 5, 3, 3, 3, 0])
    scores = cluster_scores(labels, clusters)
    assert set(scores) == {"accuracy_hungarian", "accuracy_majority", "nmi"}
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["accuracy_hungarian"] == pytest.approx(5 / 6)
    assert scores["accuracy_majority"] == pytest.approx(5 / 6)
    assert scores["nmi"] == pytest.approx(nmi(labels.numpy(), clusters.numpy()))


def test_one_hot_sample_follows_probs():
    probs = torch.tensor([0.1, 0.6, 0.3]).expand(30_000, 3)
    s = one_hot_sample(probs, torch.Generator().manual_seed(0))
    assert s.shape == (30_000, 3)
    assert torch.all(s.sum(-1) == 1) and set(s.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(s.mean(0), torch.tensor([0.1, 0.6, 0.3]), atol=0.01)


def test_seed_agreement_is_each_codes_mean_mi_with_the_others_and_reads_no_labels():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 10, 4000)
    relabelled = (classes + 3) % 10  # the same partition under other names: full agreement, H(c) nats
    noisy = np.where(rng.random(4000) < 0.3, rng.integers(0, 10, 4000), classes)
    unrelated = rng.integers(0, 10, 4000)
    codes = [classes, relabelled, noisy, unrelated]
    scores = seed_agreement(codes)
    pairs = {(i, j): mutual_information(codes[i], codes[j]) for i in range(4) for j in range(i + 1, 4)}
    assert pairs[0, 1] == pytest.approx(np.log(10), abs=0.01) and pairs[0, 3] < 0.02
    assert scores[0] == pytest.approx((pairs[0, 1] + pairs[0, 2] + pairs[0, 3]) / 3)
    assert scores[3] == pytest.approx((pairs[0, 3] + pairs[1, 3] + pairs[2, 3]) / 3)
    assert np.mean(scores) == pytest.approx(np.mean(list(pairs.values())))  # their mean: the mean over pairs
    assert scores[3] < scores[2] < scores[0] == pytest.approx(scores[1])  # the odd one out agrees least
    # codes that collapse agree on nothing, though they are equal (NMI would call them one partition)
    assert seed_agreement([np.zeros(100, int), np.zeros(100, int)]) == [0.0, 0.0]
    assert nmi(np.zeros(100, int), np.zeros(100, int)) == 1.0


def test_matched_renames_a_code_to_the_reference_it_agrees_with_most():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 10, 3000)
    assert np.array_equal(matched(rng.permutation(10)[reference], reference), reference)
    merged = matched((np.where(reference == 9, 4, reference) + 2) % 10, reference)  # 4 and 9 as one category
    apart = (reference != 4) & (reference != 9)
    assert np.array_equal(merged[apart], reference[apart]) and set(merged[~apart]) in ({4}, {9})
    split = np.where((reference == 4) & (rng.random(3000) < 0.5), 10, reference)  # eleven: the smaller half a new name
    renamed = matched((split + 5) % 11, reference)
    assert (renamed == reference).mean() == accuracy_hungarian(reference, renamed) > 0.94 and renamed.max() == 10


def _seeds(rng, classes, errors, n_seeds=5):
    """Codes of the classes under other names, each wrong on its own random `errors` share of the images."""
    codes = []
    for _ in range(n_seeds):
        noisy = np.where(rng.random(len(classes)) < errors, rng.integers(0, 10, len(classes)), classes)
        codes.append(rng.permutation(10)[noisy])
    return codes


def test_a_vote_of_seeds_that_err_apart_beats_every_seed_without_reading_labels():
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 10, 5000)
    codes = _seeds(rng, classes, errors=0.3)
    alone = [accuracy_hungarian(classes, code) for code in codes]
    together = accuracy_hungarian(classes, consensus(codes))
    assert max(alone) < 0.76 and together > 0.93  # 5 votes, each right with p ~ 0.73: the majority nearly always
    renamed = [rng.permutation(10)[code] for code in codes]  # names are arbitrary: the vote does not depend on them
    assert accuracy_hungarian(consensus(codes), consensus(renamed)) == 1.0


def test_a_seed_that_splits_a_class_by_style_is_outvoted():
    rng = np.random.default_rng(3)
    classes, style = rng.integers(0, 10, 4000), rng.random(4000) < 0.5
    codes = _seeds(rng, classes, errors=0.05, n_seeds=4)
    codes.append(np.where((classes == 1) & style, 7, classes))  # merges 1 with 7 and splits it: 2 errors in one
    together = accuracy_hungarian(classes, consensus(codes))
    assert together > 0.99 > accuracy_hungarian(classes, codes[-1])
    assert consensus([classes, classes]).tolist() == classes.tolist()  # agreeing seeds: their code


def test_kmeans_finds_the_centres_of_separate_blobs_and_repeats_itself_from_the_same_generator():
    """Ten blobs of unequal sizes in 16 dims, 8 sd apart: the centres found are the blobs' means, one each."""
    rng = torch.Generator().manual_seed(3)
    means = 8 * torch.randn(10, 16, generator=rng)
    sizes = torch.randint(20, 200, (10,), generator=rng)
    points = torch.cat([m + torch.randn(int(n), 16, generator=rng) for m, n in zip(means, sizes)])
    centres = kmeans(points, 10, torch.Generator().manual_seed(0))
    nearest = torch.cdist(centres, means).argmin(1)
    assert sorted(nearest.tolist()) == list(range(10))
    blob_means = torch.stack([p.mean(0) for p in points.split(sizes.tolist())])
    assert torch.allclose(centres, blob_means[nearest], atol=1e-4)
    assert torch.equal(kmeans(points, 10, torch.Generator().manual_seed(0)), centres)


def test_cluster_log_var_is_the_moment_matched_variance_of_each_clusters_gaussians():
    """Cluster 0: means with sd 2 in dim 0 and 0 in dim 1, posterior variance 0.25: 4.25 and 0.25. Cluster 1: one
    member (kept at unit variance). Cluster 2: empty (unit)."""
    rng = torch.Generator().manual_seed(0)
    spread = torch.randn(20000, generator=rng)
    spread = 2 * (spread - spread.mean()) / spread.std(correction=0)
    means = torch.cat([torch.stack([spread, torch.full_like(spread, 3)], 1), torch.tensor([[5.0, 5.0]])])
    z = DiagonalGaussian(means, torch.full_like(means, math.log(0.25)))
    clusters = torch.cat([torch.zeros(20000, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    log_var = cluster_log_var(z, clusters, 3)
    assert torch.allclose(log_var.exp(), torch.tensor([[4.25, 0.25], [1.0, 1.0], [1.0, 1.0]]), atol=1e-4)
