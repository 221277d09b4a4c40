import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from ml.heads import train_head
from ml.selection import POOL_FACTOR, kmeans_labels, select_batch
from ml.uncertainty import entropy, least_confidence, margin
from tests.ml._embeddings import shoes_embeddings


def _random_proba(n: int, k: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, k)) * 2
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    "strategy,key",
    [("entropy", lambda P: -entropy(P)), ("margin", margin), ("least_confidence", lambda P: -least_confidence(P))],
)
def test_uncertainty_strategies_take_the_least_sure(strategy, key):
    P = _random_proba(300, 5)
    picked = select_batch(P, None, 10, strategy)
    assert picked.dtype == np.int64 and len(set(picked)) == 10
    np.testing.assert_array_equal(picked, np.argsort(key(P), kind="stable")[:10])


def test_random_is_seeded_and_unique():
    P = _random_proba(50, 3)
    a, b = select_batch(P, None, 20, "random", seed=3), select_batch(P, None, 20, "random", seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a)) == 20
    assert not np.array_equal(a, select_batch(P, None, 20, "random", seed=4))


def test_small_pools_and_bad_arguments():
    P = _random_proba(5, 3)
    X = np.random.default_rng(0).normal(size=(5, 8))
    assert sorted(select_batch(P, X, 20, "diverse")) == list(range(5))
    assert len(select_batch(P, X, 0, "diverse")) == 0
    with pytest.raises(ValueError):
        select_batch(P, X, 2, "smart")
    with pytest.raises(ValueError):
        select_batch(_random_proba(50, 3), None, 5, "diverse")


def _duplicate_groups(n_groups: int = 60, per_group: int = 5, d: int = 32, seed: int = 0):
    """Groups of near-identical vectors; the first groups are the most uncertain."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, d))
    group = np.repeat(np.arange(n_groups), per_group)
    X = centres[group] + 0.01 * rng.normal(size=(len(group), d))
    # top-1 probability rises with the group index: group 0 is the least sure
    top = 0.34 + 0.6 * group / n_groups + 0.001 * rng.random(len(group))
    P = np.stack([top, (1 - top) * 0.6, (1 - top) * 0.4], axis=1)
    return P, X, group


def test_diverse_avoids_near_duplicates():
    P, X, group = _duplicate_groups(n_groups=100)
    by_margin = select_batch(P, X, 20, "margin")
    diverse = select_batch(P, X, 20, "diverse")
    assert len(set(group[by_margin])) == 4  # 20 items, 4 distinct products
    assert len(set(group[diverse])) == 20  # one per product
    # ... and still drawn from the uncertain end of the pool: the POOL_FACTOR * k most
    # uncertain *distinct* pictures (the 60 least sure of 100 products, not 300 shots)
    assert group[diverse].max() < POOL_FACTOR * 20
    assert len(set(diverse)) == 20
    # output is sorted most uncertain first
    u = 1 - margin(P[diverse])
    assert np.all(np.diff(u) <= 1e-12)


def test_diverse_on_real_embeddings_keeps_second_shots_off_the_page():
    shoes = shoes_embeddings()
    head = train_head(shoes.X_train[::4], shoes.y_train[::4], 3)
    pool = np.vstack([shoes.X_train[1::4], shoes.X_test])
    P = head.predict_proba(pool)
    u = 1 - margin(P)
    # a second shot of each of the 15 least sure photos: nearly the same embedding and the
    # same uncertainty, as a re-shoot or a re-encoded copy would have
    top = np.argsort(-u)[:15]
    rng = np.random.default_rng(0)
    shots = pool[top] + 0.02 * np.abs(pool[top]).mean() * rng.normal(size=pool[top].shape)
    X = np.vstack([pool, shots])
    P2 = np.vstack([P, P[top]])
    twin = {**{int(t): len(pool) + i for i, t in enumerate(top)}, **{len(pool) + i: int(t) for i, t in enumerate(top)}}

    def pairs(page):
        return sum(1 for a in page if twin.get(int(a)) in set(int(b) for b in page)) // 2

    by_margin = select_batch(P2, X, 20, "margin")
    diverse = select_batch(P2, X, 20, "diverse")
    assert pairs(by_margin) >= 5  # the plain uncertainty order shows both shots of a photo
    assert pairs(diverse) == 0
    # still the uncertain end of the pool: every pick is among the POOL_FACTOR * k least sure
    # distinct photos
    u2 = 1 - margin(P2)
    assert u2[diverse].min() >= np.sort(u)[::-1][POOL_FACTOR * 20 - 1] - 1e-12


def test_multilabel_selection_uses_thresholds():
    P = np.array([[0.9, 0.1], [0.3, 0.05], [0.6, 0.02], [0.98, 0.97]])
    t = np.array([0.3, 0.5])
    picked = select_batch(P, None, 2, "entropy", multilabel=True, thresholds=t)
    assert list(picked) == [1, 2]  # row 1 sits on tag 0's threshold, row 2 is closest next


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_kmeans_backends_recover_separated_blobs(backend):
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(6), 30)
    X = rng.normal(size=(6, 16))[truth] * 10 + rng.normal(size=(180, 16))
    labels = kmeans_labels(X, 6, seed=0, backend=backend)
    assert adjusted_rand_score(truth, labels) > 0.95
