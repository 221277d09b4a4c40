"""ml.multiview on real shoe photos: the product's multi-view vectors are the benchmark's
features, the default stays the plain centre-crop embedder, and bad files and bad specs are
reported by name."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ml.embedding import Embedder
from ml.features import FeatureStore, spec_features
from ml.multiview import (MultiViewEmbedder, canonical_spec, crops_per_image, make_embedder,
                          vector_key)
from ml.preprocess import load_rgb

from .test_embedding import _cos, onnx_cache, onnx_embedder, shoes  # noqa: F401 - fixtures

SPEC = "center,flip:mean+tiles2,tiles3:max"


@pytest.fixture(scope="module")
def photos(shoes) -> list[Path]:  # noqa: F811
    return [p for b in ("adidas", "converse", "nike") for p in shoes["test"][b][:3]]


@pytest.fixture(scope="module")
def multiview(onnx_embedder) -> MultiViewEmbedder:  # noqa: F811
    return MultiViewEmbedder([onnx_embedder], SPEC)


def test_the_vector_is_the_benchmarks_spec_features_of_the_same_files(multiview, onnx_embedder, photos, tmp_path):  # noqa: F811
    r = multiview.embed_paths(photos)
    assert r.ok == list(range(len(photos))) and not r.errors
    assert r.vectors.shape == (len(photos), 2 * 1280) == (len(photos), multiview.dim)
    store = FeatureStore(onnx_embedder, cache_dir=tmp_path)
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
    store.ensure([str(p) for p in photos], shas, ["center", "flip", "tiles2", "tiles3"])
    want = spec_features(store, shas, SPEC)  # cached as float16: equal up to its rounding
    assert _cos(r.vectors, want).min() >= 0.9999
    # the blocks are what they say: the tile block is a max, never below the tiles' mean
    assert not np.allclose(r.vectors[:, :1280], r.vectors[:, 1280:])


def test_the_centre_crop_alone_is_the_plain_embedder_and_keeps_the_backbones_name(onnx_cache, onnx_embedder, photos):  # noqa: F811
    plain = make_embedder("efficientnet-lite0", "center:mean", runtime="onnx", cache_dir=onnx_cache)
    assert type(plain) is Embedder and plain.name == "efficientnet-lite0"
    centre = MultiViewEmbedder([onnx_embedder], "center")
    assert centre.name == "efficientnet-lite0" and centre.dim == 1280
    assert _cos(centre.embed_paths(photos).vectors, onnx_embedder.embed_paths(photos).vectors).min() >= 0.999


def test_images_and_paths_give_the_same_vectors(multiview, photos):
    pictures = [load_rgb(p, draft_size=multiview.draft_size) for p in photos[:3]]
    assert _cos(multiview.embed_images(pictures), multiview.embed_paths(photos[:3]).vectors).min() >= 0.9999
    assert multiview.embed_images([]).shape == (0, multiview.dim)


def test_a_bad_file_is_reported_by_index_and_the_others_keep_their_order(multiview, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [photos[0], broken, tmp_path / "missing.jpg", photos[1]]
    r = multiview.embed_paths(paths)
    assert r.ok == [0, 3] and set(r.errors) == {1, 2}
    assert "broken.jpg" in r.errors[1] and r.errors[2].startswith("file not found")
    alone = multiview.embed_paths([photos[0], photos[1]]).vectors
    assert _cos(r.vectors, alone).min() >= 0.9999


def test_two_backbones_lie_side_by_side_in_every_block(onnx_cache, photos):  # noqa: F811
    both = make_embedder("efficientnet-lite0+efficientnet-lite2", "center+tiles2:max",
                         runtime="onnx", cache_dir=onnx_cache)
    assert isinstance(both, MultiViewEmbedder)
    assert both.name == "efficientnet-lite0+efficientnet-lite2@center+tiles2.max"
    v = both.embed_paths(photos[:2]).vectors
    assert v.shape == (2, 2 * (1280 + 1280))
    lite0 = MultiViewEmbedder([both.bases[0]], "center").embed_paths(photos[:2]).vectors
    assert _cos(v[:, :1280], lite0).min() >= 0.9999  # block 1 = [lite0 centre | lite2 centre]


def test_specs_are_written_one_way_and_bad_ones_name_the_problem() -> None:
    assert canonical_spec("center:mean") == "center"
    assert canonical_spec(" center , flip : mean + tiles3:max") == "center,flip+tiles3:max"
    assert vector_key("efficientnet-lite0", "center") == "efficientnet-lite0"
    assert vector_key("efficientnet-lite0", SPEC) == "efficientnet-lite0@center,flip+tiles2,tiles3.max"
    assert crops_per_image(SPEC) == 15 and crops_per_image("center") == 1
    with pytest.raises(ValueError, match="tiles9"):
        canonical_spec("center+tiles9:max")
    with pytest.raises(ValueError, match="pooling 'median'"):
        canonical_spec("center:median")
    with pytest.raises(ValueError, match="annotated boxes"):
        canonical_spec("center+boxes:max")


def test_the_gpu_paths_batching_gives_the_same_vectors_and_errors(onnx_embedder, photos, tmp_path):  # noqa: F811
    """No GPU here: the CUDA branch's batching (decode threads, one model call per backbone for
    several images, then the split back per image) is run with the CPU model behind it."""
    batched = MultiViewEmbedder([onnx_embedder], SPEC)
    want = batched.embed_paths(photos[:5]).vectors
    batched.runtime = "cuda"
    r = batched.embed_paths([*photos[:3], tmp_path / "gone.jpg", *photos[3:5]])
    assert r.ok == [0, 1, 2, 4, 5] and list(r.errors) == [3]
    assert _cos(r.vectors, want).min() >= 0.9999
