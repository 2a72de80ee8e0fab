"""The FAISS layer: index kinds, ids, removal, Euclidean distances, recall, files."""
from __future__ import annotations

import json
import threading

import faiss
import numpy as np
import pytest

from encoder.distance import pairwise
from encoder.errors import ConfigError
from indexer.vectors import INDEX_FILE, MANIFEST_FILE, IndexSpec, VectorIndex, measure_recall


@pytest.fixture(scope="module")
def vectors(model_embedder, fashion_test):
    """Real embeddings of 3,000 Fashion-MNIST test images, with ids that are not 0..N-1."""
    x = model_embedder.embed(fashion_test.images[:3000])
    return np.arange(1000, 1000 + len(x), dtype=np.int64), x


def test_spec_text_round_trip_and_defaults():
    assert str(IndexSpec()) == "flat"
    spec = IndexSpec.parse("HNSW: m=16, ef_search=40")
    assert (spec.kind, spec.m, spec.ef_search) == ("hnsw", 16, 40)
    assert IndexSpec.parse(str(spec)) == spec
    assert IndexSpec.parse("ivf:nlist=auto,nprobe=8") == IndexSpec(kind="ivf", nprobe=8)


@pytest.mark.parametrize("text, message", [
    ("annoy", "unknown index kind 'annoy'"),
    ("flat:m=16", "'m=16' in 'flat:m=16' is not a parameter of flat indexes"),
    ("hnsw:nprobe=4", "not a parameter of hnsw indexes (parameters: m, ef_construction, ef_search)"),
    ("hnsw:m=lots", "m='lots' in 'hnsw:m=lots' is not an integer"),
    ("hnsw:m=1", "index parameter m must be an integer in 4..128, not 1"),
    ("ivf:nprobe=0", "index parameter nprobe must be an integer in 1..1,048,576, not 0"),
])
def test_spec_rejects_bad_values_naming_them(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        IndexSpec.parse(text)


@pytest.mark.parametrize("text, exact", [("flat", True), ("hnsw:m=16", False),
                                         ("ivf:nlist=16,nprobe=16", False)])
def test_every_kind_returns_our_ids_and_euclidean_distances(vectors, text, exact):
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse(text), x.shape[1], ids, x)
    distances, found = index.search(x[:5], 4)
    nearest = np.sort(pairwise(x[:5], x), axis=1)[:, :4]
    np.testing.assert_array_equal(found[:, 0], ids[:5])  # each vector finds itself first
    np.testing.assert_allclose(distances, nearest, atol=1e-3)  # distances, not squared distances
    assert index.exact is exact


@pytest.mark.parametrize("text, floor", [("flat", 1.0), ("hnsw:m=16", 0.95),
                                         ("ivf:nlist=16,nprobe=16", 0.95)])
def test_recall_at_10_against_exact_search(vectors, text, floor):
    """The ids each kind returns are among the true 10 nearest (ties counted as hits), and an
    approximate index's own recall@10, measured when it was built, says so too."""
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse(text), x.shape[1], ids, x)
    queries = x[::15]  # 200 of the vectors
    _, found = index.search(queries, 10)
    true = pairwise(queries, x)
    tenth = np.sort(true, axis=1)[:, 9:10]
    found_distance = np.take_along_axis(true, found - ids[0], axis=1)  # ids are ids[0] + row
    assert np.mean(found_distance <= tenth + 1e-5) >= floor
    if index.exact:
        assert index.recall is None  # nothing to measure
    else:
        assert index.recall.items == len(ids) and index.recall.at_10 >= floor


@pytest.mark.parametrize("text", ["flat", "hnsw:m=16", "ivf:nlist=16,nprobe=16"])
def test_removed_ids_are_never_returned_and_the_rest_keep_their_ids(vectors, text):
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse(text), x.shape[1], ids, x)
    gone = ids[:50]
    index.remove(gone)
    assert len(index) == len(ids) - 50
    np.testing.assert_array_equal(index.ids(), ids[50:])
    _, found = index.search(x[:100], 10)
    assert not np.isin(found, gone).any()
    np.testing.assert_array_equal(found[50:, 0], ids[50:100])  # ids did not shift (FAISS #1379)
    kept_ids, kept = index.vectors()
    np.testing.assert_array_equal(np.sort(kept_ids), ids[50:])
    np.testing.assert_array_equal(kept[np.argsort(kept_ids)], x[50:])


def test_hnsw_hides_deleted_nodes_until_a_fifth_are_gone(vectors):
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse("hnsw:m=16"), x.shape[1], ids, x)
    index.remove(ids[:500])
    assert index.index.ntotal == len(ids) and index.wants_rebuild() is None
    index.remove(ids[500:700])
    assert "deleted items" in index.wants_rebuild()


def test_ivf_stays_exact_until_it_can_train_then_wants_training(vectors):
    ids, x = vectors
    spec = IndexSpec.parse("ivf:nlist=64")  # 64 lists need 39 * 64 = 2,496 vectors
    small = VectorIndex.build(spec, x.shape[1], ids[:2000], x[:2000])
    assert small.exact and "exact until" in small.describe()
    small.add(ids[2000:], x[2000:])
    assert "enough to train" in small.wants_rebuild()
    trained = VectorIndex.build(spec, x.shape[1], ids, x)
    assert not trained.exact and trained.trained_on == len(ids)
    assert trained.recall.items == len(ids) and 0.0 <= trained.recall.at_10 <= 1.0


def test_search_parameters_are_per_call(vectors):
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse("hnsw:m=8,ef_search=16"), x.shape[1], ids, x)
    _, wide = index.search(x[:20], 10, ef_search=200)
    _, default = index.search(x[:20], 10)
    _, again = index.search(x[:20], 10)
    np.testing.assert_array_equal(default, again)  # a wide search left no setting behind
    assert wide.shape == default.shape == (20, 10)


def test_a_few_queries_search_on_one_openmp_thread_and_many_on_all(vectors):
    """OpenMP's thread count is per calling thread: a thread that searched one query keeps one
    thread (a service's threads do not set it again each search), one that searches many gets the
    machine's back, and other threads never see either setting."""
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse("flat"), x.shape[1], ids, x)
    default = faiss.omp_get_max_threads()
    seen: dict[str, int] = {}

    def searches():
        index.search(x[:1], 5)
        seen["after one query"] = faiss.omp_get_max_threads()
        index.search(x[:1], 5)
        seen["after another"] = faiss.omp_get_max_threads()
        index.search(x[:64], 5)
        seen["after 64 queries"] = faiss.omp_get_max_threads()

    worker = threading.Thread(target=searches)
    worker.start()
    worker.join()
    assert seen == {"after one query": 1, "after another": 1, "after 64 queries": default}
    assert faiss.omp_get_max_threads() == default  # this thread was never touched


@pytest.mark.parametrize("text", ["flat", "hnsw:m=16", "ivf:nlist=16"])
def test_save_and_load_round_trip(tmp_path, vectors, text):
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse(text), x.shape[1], ids, x)
    index.remove(ids[:3])
    index.save(tmp_path, {"generation": 7, "model_id": "m1"})
    expect = {"model_id": "m1", "spec": str(IndexSpec.parse(text))}
    loaded, manifest, why = VectorIndex.load(tmp_path, expect)
    assert why == "" and manifest["generation"] == 7 and len(loaded) == len(ids) - 3
    np.testing.assert_array_equal(loaded.search(x[:5], 3)[1], index.search(x[:5], 3)[1])
    assert loaded.recall == index.recall


def test_load_refuses_damaged_replaced_or_foreign_files(tmp_path, vectors):
    ids, x = vectors
    index = VectorIndex.build(IndexSpec(), x.shape[1], ids, x)
    index.save(tmp_path, {"generation": 1, "model_id": "m1"})
    assert VectorIndex.load(tmp_path, {"model_id": "m2"})[2] == \
        "it was built for model_id 'm1', not 'm2'"
    data = bytearray((tmp_path / INDEX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / INDEX_FILE).write_bytes(bytes(data))
    assert "does not match its manifest" in VectorIndex.load(tmp_path, {})[2]
    (tmp_path / INDEX_FILE).unlink()
    assert VectorIndex.load(tmp_path, {})[2] == "no index.faiss"
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    assert "index.json is unreadable" in VectorIndex.load(tmp_path, {})[2]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": 99}))
    assert "not a format-1 manifest" in VectorIndex.load(tmp_path, {})[2]


def test_hnsw_save_scrubs_deleted_vectors_and_keeps_recall(tmp_path, vectors):
    """No deleted embedding reaches the saved file (nor stays in memory); searches keep their
    recall, and the scrubbed nodes are remembered across a load."""
    ids, x = vectors
    index = VectorIndex.build(IndexSpec.parse("hnsw:ef_search=32"), x.shape[1], ids, x)
    gone = ids[::7]  # a seventh deleted: under the rebuild limit
    index.remove(gone)
    index.save(tmp_path, {"generation": 1})
    data = (tmp_path / INDEX_FILE).read_bytes()
    row = {int(i): r for r, i in enumerate(ids)}
    assert not any(x[row[int(i)]].tobytes() in data for i in gone)
    assert all(x[row[int(i)]].tobytes() in data for i in ids[1:200:7])  # the live ones are there
    live = np.setdiff1d(ids, gone)
    assert measure_recall(index, live, x[[row[int(i)] for i in live]]).at_10 >= 0.95
    loaded, manifest, why = VectorIndex.load(tmp_path, {})
    assert why == "" and manifest["scrubbed"] == gone.tolist()
    assert loaded.scrub() == 0  # nothing new to scrub
    found = loaded.search(x[[row[int(i)] for i in gone]], 10)[1]
    assert not np.isin(found, gone).any()
