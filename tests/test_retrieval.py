"""Tests for ``bioscan_clip.retrieval.KeyIndex``: exactness against numpy, approximate recall, persistence, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import faiss
import numpy as np
import pytest

from bioscan_clip.retrieval.key_index import KeyIndex, compare_index_types, l2_normalize
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
ORDERS = ("Diptera", "Coleoptera", "Odonata")


@pytest.fixture(autouse=True, scope="module")
def _single_faiss_thread():
    # The test machines have 2 shared cores; OpenMP spin-waiting under contention made k-means 10x slower.
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def _metadata(count: int) -> dict[str, list]:
    return {
        "processid": [f"KEY{row:05d}" for row in range(count)],
        "order": [ORDERS[row % 3] for row in range(count)],
        "family": [f"family{row % 7}" for row in range(count)],
        "genus": [f"genus{row % 11}" for row in range(count)],
        "species": [None if row % 13 == 0 else f"species{row % 17}" for row in range(count)],
        "site": [f"site{row % 2}" for row in range(count)],
    }


def _brute_force(keys: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    similarity = queries @ keys.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, order, axis=1), order


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((600, 24)), rng.standard_normal((40, 24))


@pytest.fixture(scope="module")
def flat_index(random_data):
    keys, _ = random_data
    return KeyIndex.build(keys, _metadata(len(keys)), modality="dna", embedding_name="test", extra={"tau": 0.5})


def test_flat_search_equals_numpy_brute_force(flat_index, random_data):
    keys, queries = random_data
    scores, indices = flat_index.search(queries, k=7)
    expected_scores, expected_indices = _brute_force(keys, queries, 7)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert indices.dtype == np.int64 and scores.dtype == np.float32


def test_queries_are_normalised_like_keys(flat_index, random_data):
    _, queries = random_data
    np.testing.assert_array_equal(flat_index.search(queries * 37.0, 5)[1], flat_index.search(queries, 5)[1])


def test_search_labels_returns_the_neighbours_metadata(flat_index, random_data):
    _, queries = random_data
    result = flat_index.search_labels(queries, k=3, columns=["processid", "species"])
    assert result.labels["processid"][0] == [f"KEY{row:05d}" for row in result.indices[0]]
    metadata = _metadata(600)
    for query, rows in enumerate(result.indices):
        assert result.labels["species"][query] == [metadata["species"][row] for row in rows]
    default = flat_index.search_labels(queries, k=3)
    assert list(default.labels) == ["order", "family", "genus", "species"]


def test_restrict_searches_only_the_taxon_subset(flat_index, random_data):
    keys, queries = random_data
    scores, indices = flat_index.search(queries, k=5, restrict={"order": ["Diptera"]})
    subset = np.flatnonzero(np.array(_metadata(600)["order"]) == "Diptera")
    expected_scores, expected_local = _brute_force(keys[subset], queries, 5)
    np.testing.assert_array_equal(indices, subset[expected_local])  # rows of the full key table
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    # Two columns combine with AND; a bare string is one value.
    _, both = flat_index.search(queries, k=3, restrict={"order": "Odonata", "site": ["site1"]})
    metadata = _metadata(600)
    assert all(metadata["order"][row] == "Odonata" and metadata["site"][row] == "site1" for row in both.ravel())


def test_restrict_errors(flat_index, random_data):
    _, queries = random_data
    with pytest.raises(BioscanInputError, match="no key matches"):
        flat_index.search(queries, 1, restrict={"order": ["Lepidoptera"]})
    with pytest.raises(BioscanInputError, match="unknown key column 'kingdom'"):
        flat_index.search(queries, 1, restrict={"kingdom": ["Animalia"]})
    with pytest.raises(BioscanInputError, match=r"k=201 is larger than the 200 searchable keys matching"):
        flat_index.search(queries, 201, restrict={"order": ["Diptera"]})


def test_k_larger_than_key_count_never_maps_padding_to_a_label():
    index = KeyIndex.build(np.eye(3), _metadata(3))
    with pytest.raises(BioscanInputError, match="k=4 is larger than the 3 searchable keys"):
        index.search_labels(np.ones((1, 3)), k=4)
    scores, indices = index.search(np.ones((1, 3)), k=3)
    assert (indices >= 0).all() and sorted(indices[0].tolist()) == [0, 1, 2]


def test_padding_from_an_approximate_index_raises_instead_of_becoming_a_label():
    rng = np.random.default_rng(1)
    # Four tight, far-apart clusters; with nprobe=1 a query only sees its own cluster's ~25 keys.
    centres = np.eye(8)[:4] * 10
    keys = np.concatenate([centre + rng.standard_normal((100, 8)) * 0.01 for centre in centres])
    index = KeyIndex.build(keys, _metadata(400), index_type="ivf", nlist=4, nprobe=1)
    index.search(keys[:1], k=50)  # enough keys in the probed list
    with pytest.raises(BioscanInputError, match="found fewer than k=150 neighbours for query 0"):
        index.search(keys[:1], k=150)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (np.full((2, 24), np.nan), "queries row 0 contains NaN or inf"),
        (np.concatenate([np.ones((1, 24)), np.full((1, 24), np.inf)]), "queries row 1 contains NaN or inf"),
        (np.zeros((1, 24)), "queries row 0 is a zero vector"),
        (np.ones((2, 23)), "queries have dimension 23 but the keys have 24"),
        (np.ones(24), r"2-D \(rows, dim\) array, got shape \(24,\)"),
        (np.ones((0, 24)), "queries is empty"),
        (np.ones((1, 24), dtype=np.int64), "must be floating point"),
    ],
)
def test_bad_queries_raise(flat_index, queries, message):
    with pytest.raises(BioscanInputError, match=message):
        flat_index.search(queries, 1)


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_k_raises(flat_index, random_data, k):
    with pytest.raises(BioscanInputError, match="k must be a positive int"):
        flat_index.search(random_data[1], k)


def test_build_errors():
    metadata = _metadata(3)
    with pytest.raises(BioscanInputError, match="key embeddings is empty"):
        KeyIndex.build(np.zeros((0, 4)), _metadata(0))
    with pytest.raises(BioscanInputError, match="key embeddings row 1 is a zero vector"):
        KeyIndex.build(np.array([[1.0, 0], [0, 0], [0, 1]]), metadata)
    with pytest.raises(BioscanInputError, match="key embeddings row 2 contains NaN"):
        KeyIndex.build(np.array([[1.0, 0], [0, 1], [np.nan, 1]]), metadata)
    with pytest.raises(BioscanInputError, match="metadata has 3 rows but embeddings have 2"):
        KeyIndex.build(np.eye(2), metadata)
    with pytest.raises(BioscanInputError, match="metadata has no 'genus' column"):
        KeyIndex.build(np.eye(3), {name: values for name, values in metadata.items() if name != "genus"})
    with pytest.raises(
        BioscanInputError, match=r"column .processid. must hold str or None, got Value\(.int64.\) values such as int 1"
    ):
        KeyIndex.build(np.eye(3), {**metadata, "processid": [1, 2, 3]})
    with pytest.raises(BioscanInputError, match="index_type must be one of"):
        KeyIndex.build(np.eye(3), metadata, index_type="lsh")
    with pytest.raises(BioscanInputError, match="must not have an 'embedding' column"):
        KeyIndex.build(np.eye(3), {**metadata, "embedding": [[0.0]] * 3})
    with pytest.raises(BioscanInputError, match="extra must be JSON-serialisable"):
        KeyIndex.build(np.eye(3), metadata, extra={"bad": object()})
    with pytest.raises(BioscanInputError, match="IVF-PQ with pq_nbits=8 needs at least 256 keys"):
        KeyIndex.build(np.eye(3), metadata, index_type="ivfpq", nlist=1)


def test_build_from_a_shuffled_dataset_keeps_rows_aligned(random_data):
    keys, queries = random_data
    table = datasets.Dataset.from_dict(_metadata(len(keys))).shuffle(seed=3)
    order = [int(pid[3:]) for pid in table["processid"]]  # the shuffled row -> original key
    index = KeyIndex.build(keys[order], table)
    result = index.search_labels(queries, k=4, columns=["processid"])
    _, expected = _brute_force(keys, queries, 4)
    assert result.labels["processid"] == [[f"KEY{row:05d}" for row in rows] for rows in expected]


def test_save_load_round_trip(flat_index, random_data, tmp_path):
    _, queries = random_data
    target = flat_index.save(tmp_path / "keys")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keys"]  # no staging folder left behind
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["dim"] == 24 and manifest["count"] == 600 and manifest["index_type"] == "flat"
    assert manifest["normalization"] == "l2" and manifest["modality"] == "dna" and manifest["extra"] == {"tau": 0.5}
    loaded = KeyIndex.load(target)
    for restrict in (None, {"order": ["Coleoptera"]}):
        before = flat_index.search_labels(queries, 5, columns=["processid", "species"], restrict=restrict)
        after = loaded.search_labels(queries, 5, columns=["processid", "species"], restrict=restrict)
        np.testing.assert_array_equal(after.indices, before.indices)
        np.testing.assert_array_equal(after.scores, before.scores)
        assert after.labels == before.labels
    np.testing.assert_array_equal(loaded.embeddings(), flat_index.embeddings())
    assert loaded.extra == {"tau": 0.5}


def test_save_refuses_to_clobber_and_overwrites_atomically(flat_index, tmp_path):
    other = tmp_path / "not_an_index"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(BioscanInputError, match="is not a saved key index"):
        flat_index.save(other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    small = KeyIndex.build(np.eye(3), _metadata(3))
    small.save(tmp_path / "keys")
    with pytest.raises(BioscanInputError, match="already exists"):
        flat_index.save(tmp_path / "keys")
    flat_index.save(tmp_path / "keys", overwrite=True)
    assert len(KeyIndex.load(tmp_path / "keys")) == 600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keys", "not_an_index"]


def test_extra_edited_after_build_is_saved_and_checked(tmp_path):
    index = KeyIndex.build(np.eye(3), _metadata(3), extra={"calibrated": False})
    index.extra["threshold"] = 0.42
    assert KeyIndex.load(index.save(tmp_path / "a")).extra == {"calibrated": False, "threshold": 0.42}
    index.extra["bad"] = {1, 2}
    with pytest.raises(BioscanInputError, match="extra must be JSON-serialisable"):
        index.save(tmp_path / "b")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a"]


def test_load_rejects_incomplete_or_foreign_folders(flat_index, tmp_path):
    with pytest.raises(BioscanInputError, match="manifest.json is missing"):
        KeyIndex.load(tmp_path)
    target = flat_index.save(tmp_path / "keys")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["format_version"] = 99
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BioscanInputError, match="version 99"):
        KeyIndex.load(target)


@pytest.mark.slow  # a fresh interpreter imports torch through modeling_bioscanclip's package __init__ (~10 s)
def test_load_in_a_fresh_process(flat_index, random_data, tmp_path):
    _, queries = random_data
    target = flat_index.save(tmp_path / "keys")
    np.save(tmp_path / "queries.npy", queries)
    code = (
        "import sys, numpy as np; from bioscan_clip.retrieval import KeyIndex; "
        "index = KeyIndex.load(sys.argv[1]); print(index.search(np.load(sys.argv[2]), 5)[1].tolist())"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, str(target), str(tmp_path / "queries.npy")],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    ).stdout
    assert json.loads(output) == flat_index.search(queries, 5)[1].tolist()


@pytest.fixture(scope="module")
def clustered_data():
    # Approximate indexes are built for data with structure; uniform random vectors in 32-d have none.
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((40, 32))
    keys = centres[rng.integers(0, 40, 2000)] + 0.3 * rng.standard_normal((2000, 32))
    queries = centres[rng.integers(0, 40, 100)] + 0.3 * rng.standard_normal((100, 32))
    return keys, queries


APPROXIMATE_KWARGS = {"nlist": 16, "nprobe": 4, "pq_m": 16, "pq_nbits": 4, "hnsw_m": 16, "ef_construction": 40}
# Measured recall@10 on this data (faiss-cpu 1.15.1): ivf 1.0, hnsw 1.0, ivfpq 0.364 (16 codes of 4 bits for 32
# floats is lossy on purpose: it is the memory option).
RECALL_FLOORS = {"ivf": 0.9, "hnsw": 0.9, "ivfpq": 0.25}


def test_approximate_recall_against_exact(clustered_data):
    keys, queries = clustered_data
    # Without re-ranking: what the index types themselves find (IVF-PQ re-ranks 64 candidates by default).
    recalls = compare_index_types(keys, queries, k=10, **APPROXIMATE_KWARGS, rerank=0)
    print(f"recall@10 vs exact: {recalls}")
    for index_type, floor in RECALL_FLOORS.items():
        assert recalls[index_type] >= floor, (index_type, recalls)
        assert recalls[index_type] <= 1.0
    assert recalls["ivfpq"] < 0.9  # the compressed index really is approximate, not a flat index in disguise
    flat = KeyIndex.build(keys, _metadata(len(keys)))
    assert flat.recall_at_k(queries, 10) == 1.0


@pytest.mark.parametrize("index_type", ["ivf", "hnsw", "ivfpq"])
def test_approximate_indexes_restrict_and_round_trip(clustered_data, index_type, tmp_path):
    keys, queries = clustered_data
    index = KeyIndex.build(keys, _metadata(len(keys)), index_type=index_type, **APPROXIMATE_KWARGS)
    expected_class = {"ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}[index_type]
    assert isinstance(index.index, expected_class)
    _, rows = index.search(queries, 5, restrict={"order": ["Odonata"]})
    orders = _metadata(len(keys))["order"]
    assert all(orders[row] == "Odonata" for row in rows.ravel())
    loaded = KeyIndex.load(index.save(tmp_path / index_type))
    assert loaded.index_type == index_type
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def test_l2_normalize_is_unit_length_and_float32():
    vectors = l2_normalize(np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float64))
    assert vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 1.0]])


def test_docstring_examples_run():
    import doctest

    import bioscan_clip.retrieval.key_index

    results = doctest.testmod(bioscan_clip.retrieval.key_index)
    assert results.failed == 0 and results.attempted >= 3


# ---------------------------------------------------------------------------- scale: memory, re-ranking, parameters


def test_saved_vectors_are_memory_mapped_not_read(clustered_data, tmp_path):
    keys, queries = clustered_data
    index = KeyIndex.build(keys, _metadata(len(keys)), index_type="ivfpq", nlist=16, pq_m=8, pq_nbits=4)
    folder = index.save(tmp_path / "keys")
    assert "vectors.npy" in json.loads((folder / "manifest.json").read_text())["checksums"]  # verified on load
    loaded = KeyIndex.load(folder)
    assert isinstance(loaded.vectors, np.memmap) and Path(loaded.vectors.filename) == (folder / "vectors.npy").resolve()
    assert loaded.vectors.dtype == np.float32 and loaded.vectors.shape == (len(keys), 32)
    np.testing.assert_allclose(np.linalg.norm(loaded.embeddings(), axis=1), 1.0, rtol=1e-5)
    assert not loaded.embeddings().flags["WRITEABLE"]
    np.testing.assert_array_equal(loaded.search(queries, 3)[1], index.search(queries, 3)[1])
    # The vectors file is verified like every other file.
    data = bytearray((folder / "vectors.npy").read_bytes())
    data[-5] ^= 0x01
    (folder / "vectors.npy").write_bytes(bytes(data))
    with pytest.raises(BioscanInputError, match=r"corrupted or mixed: vectors.npy fails its sha256"):
        KeyIndex.load(folder)


def test_flat_index_is_mapped_on_load_and_exact(flat_index, random_data, tmp_path):
    keys, queries = random_data
    blocks = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
    loaded = KeyIndex.load(flat_index.save(tmp_path / "keys"))
    assert isinstance(loaded.vectors, np.memmap)
    assert not loaded.index.codes.is_owned  # faiss maps index.faiss instead of reading it
    _, expected = _brute_force(keys, queries, 7)
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], expected)
    np.testing.assert_array_equal(loaded.exact_search(queries, 7)[1], expected)
    # Searches raise faiss's process-wide sgemm block sizes only while they run.
    assert (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs) == blocks


def test_build_normalises_in_float32_without_a_full_copy():
    import tracemalloc

    rng = np.random.default_rng(3)
    keys = rng.standard_normal((20_000, 64)).astype(np.float32)  # 5.1 MB
    metadata = {"processid": [str(row) for row in range(len(keys))]}
    tracemalloc.start()
    KeyIndex.build(keys, metadata, required_columns=())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # faiss's own storage is not traced; numpy temporaries are: chunks only, not a (float64) copy of the matrix.
    assert peak < 0.5 * keys.nbytes, peak
    unit = l2_normalize(keys, inplace=True)
    assert unit is keys and np.allclose(np.linalg.norm(keys, axis=1), 1.0, rtol=1e-5)
    doubles = rng.standard_normal((5, 8))
    assert l2_normalize(doubles, inplace=True) is not doubles  # a float64 array cannot hold the float32 result


def test_ivfpq_rerank_recovers_exact_recall(clustered_data):
    keys, queries = clustered_data
    kwargs = {"index_type": "ivfpq", "nlist": 16, "nprobe": 4, "pq_m": 8, "pq_nbits": 4, "pq_fast_scan": True}
    plain = KeyIndex.build(keys, _metadata(len(keys)), rerank=0, **kwargs)
    reranked = KeyIndex.build(keys, _metadata(len(keys)), rerank=64, **kwargs)
    assert isinstance(reranked.index, faiss.IndexIVFPQFastScan)
    exact_scores, exact_rows = reranked.exact_search(queries, 1)
    plain_recall = float(np.mean(plain.search(queries, 1)[1][:, 0] == exact_rows[:, 0]))
    scores, rows = reranked.search(queries, 1)
    recall = float(np.mean(rows[:, 0] == exact_rows[:, 0]))
    print(f"recall@1 vs exact: PQ alone {plain_recall:.2f}, re-ranked {recall:.2f}")
    assert recall >= 0.95 and plain_recall < 0.9
    # Re-ranked scores are exact inner products of the stored vectors, not PQ estimates.
    np.testing.assert_allclose(scores[:, 0], np.sum(reranked.embeddings()[rows[:, 0]] * l2_normalize(queries), 1), 1e-5)
    # Re-ranking honours restrict: candidates come from the restricted search.
    _, rows = reranked.search(queries, 5, restrict={"order": ["Odonata"]})
    assert all(_metadata(len(keys))["order"][row] == "Odonata" for row in rows.ravel())
    reranked.set_search_params(rerank=0, nprobe=16)
    assert reranked.manifest["index_params"]["rerank"] == 0 and reranked.index.nprobe == 16


def test_rerank_scores_candidates_in_place_and_keeps_padding_last(clustered_data, tmp_path):
    keys, queries = clustered_data
    kwargs = {"index_type": "ivfpq", "nlist": 16, "nprobe": 4, "pq_m": 8, "pq_fast_scan": True, "rerank": 8}
    KeyIndex.build(keys, _metadata(len(keys)), **kwargs).save(tmp_path / "pq")
    loaded = KeyIndex.load(tmp_path / "pq")  # vectors memory-mapped, read in place by faiss
    candidates = np.array([[7, -1, 3, 11], [-1, -1, 2, 5]], dtype=np.int64)  # -1: faiss's padding
    normalised = l2_normalize(queries[:2])
    scores, rows = loaded._rerank(normalised, candidates, 4)
    for query, real in ((0, [7, 3, 11]), (1, [2, 5])):
        exact = loaded.embeddings()[real] @ normalised[query]
        order = np.argsort(-exact)
        assert rows[query].tolist() == [real[i] for i in order] + [-1] * (4 - len(real))
        np.testing.assert_allclose(scores[query, : len(real)], exact[order], rtol=1e-6)
        assert np.all(np.isneginf(scores[query, len(real) :]))


def test_index_params_round_trip_through_save_and_load(clustered_data, tmp_path):
    keys, queries = clustered_data
    index = KeyIndex.build(
        keys, _metadata(len(keys)), index_type="ivfpq", nlist=20, nprobe=5, pq_m=4, pq_fast_scan=True, rerank=30,
        train_size=1000, vectors_dir=tmp_path,
    )  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # the build's vector file is unlinked, not left in vectors_dir
    expected = {"nlist": 20, "nprobe": 5, "pq_m": 4, "pq_nbits": 4, "pq_fast_scan": True, "rerank": 30}
    assert {name: index.manifest["index_params"][name] for name in expected} == expected
    loaded = KeyIndex.load(index.save(tmp_path / "keys"))
    assert loaded.manifest["index_params"] == index.manifest["index_params"]
    assert faiss.extract_index_ivf(loaded.index).nprobe == 5 and faiss.extract_index_ivf(loaded.index).nlist == 20
    np.testing.assert_array_equal(loaded.search(queries, 4)[1], index.search(queries, 4)[1])
    loaded.set_search_params(nprobe=8, rerank=10)
    again = KeyIndex.load(loaded.save(tmp_path / "keys", overwrite=True))
    assert again.manifest["index_params"]["nprobe"] == 8 and again.manifest["index_params"]["rerank"] == 10
    assert faiss.extract_index_ivf(again.index).nprobe == 8


def test_auto_index_type_is_chosen_by_key_count(monkeypatch):
    import bioscan_clip.retrieval.index_types as index_types

    keys = np.random.default_rng(5).standard_normal((600, 16))
    assert KeyIndex.build(keys, _metadata(600), index_type="auto").index_type == "flat"
    monkeypatch.setattr(index_types, "AUTO_FLAT_MAX_KEYS", 500)
    index = KeyIndex.build(keys, _metadata(600), index_type="auto")
    assert index.index_type == "ivfpq" and isinstance(index.index, faiss.IndexIVFPQFastScan)
    params = index.manifest["index_params"]
    assert params["auto"] and params["rerank"] == 64 and params["pq_nbits"] == 4 and params["pq_m"] == 2


def test_the_default_rerank_grows_with_the_key_count():
    from bioscan_clip.retrieval import default_rerank, resolve_index_params

    # The true neighbour sinks among the PQ scores as keys grow: 64 candidates per million keys, at least 64.
    assert [default_rerank(n) for n in (1_000, 1_000_000, 2_000_000, 5_150_000)] == [64, 64, 128, 330]
    assert resolve_index_params("ivfpq", 2_000_000, 768)[1]["rerank"] == 128
    assert resolve_index_params("ivfpq", 2_000_000, 768, rerank=16)[1]["rerank"] == 16  # the caller's choice stands


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"index_type": "ivf", "nlist": 0}, r"nlist must be in \[1, 600\] \(the key count\), got 0"),
        ({"index_type": "ivf", "nprobe": -3}, r"nprobe must be an int >= 1, got -3"),
        ({"index_type": "ivf", "nprobe": 2.5}, r"nprobe must be an int >= 1, got 2.5"),
        ({"index_type": "ivfpq", "pq_m": 5}, "pq_m must divide the dimension 24, got 5"),
        ({"index_type": "ivfpq", "pq_nbits": 0}, r"pq_nbits must be an int in \[1, 16\], got 0"),
        ({"index_type": "ivfpq", "pq_fast_scan": True, "pq_nbits": 8}, "pq_nbits must be 4, got 8"),
        ({"index_type": "ivf", "pq_fast_scan": True}, "pq_fast_scan applies to index_type 'ivfpq'"),
        ({"index_type": "ivfpq", "rerank": -1}, r"rerank must be an int >= 0, got -1"),
        ({"index_type": "flat", "rerank": 10}, "a flat index is exact, got rerank=10"),
        ({"index_type": "hnsw", "hnsw_m": 1}, r"hnsw_m must be an int in \[2, 1024\], got 1"),
        ({"index_type": "hnsw", "ef_search": 0}, r"ef_search must be an int >= 1, got 0"),
        ({"index_type": "ivf", "nlist": 10, "train_size": 5}, r"train_size must be an int in \[10, 600\], got 5"),
        ({"index_type": "ivfqp"}, "index_type must be one of .*'auto'.* got 'ivfqp'"),
    ],
)
def test_bad_index_params_give_one_clear_error(random_data, kwargs, message):
    keys, _ = random_data
    with pytest.raises(BioscanInputError, match=message) as caught:
        KeyIndex.build(keys, _metadata(len(keys)), **kwargs)
    assert "\n" not in str(caught.value)


def test_bad_search_params_are_refused(flat_index):
    with pytest.raises(BioscanInputError, match="nprobe applies to IVF indexes, not to this flat index"):
        flat_index.set_search_params(nprobe=4)
    with pytest.raises(BioscanInputError, match="a flat index is exact"):
        flat_index.set_search_params(rerank=5)


def test_hnsw_build_settings_reach_faiss_and_the_manifest(random_data, tmp_path):
    keys, _ = random_data
    index = KeyIndex.build(keys, _metadata(len(keys)), index_type="hnsw", hnsw_m=8, ef_construction=24, ef_search=12)
    assert index.index.hnsw.efConstruction == 24 and index.index.hnsw.efSearch == 12
    loaded = KeyIndex.load(index.save(tmp_path / "keys"))
    assert {name: loaded.manifest["index_params"][name] for name in ("hnsw_m", "ef_construction", "ef_search")} == {
        "hnsw_m": 8,
        "ef_construction": 24,
        "ef_search": 12,
    }
    assert loaded.index.hnsw.efSearch == 12


# ---- adding an index type is one entry of INDEX_TYPES ---------------------------------------------------------------
def _scalar_quantised_entry():
    """A toy index type as a contributor adds one: 8-bit scalar-quantised vectors, re-ranked exactly, with a search
    setting of its own that faiss does not have (only the manifest holds it)."""
    from bioscan_clip.retrieval.index_types import IndexTypeEntry, SearchSetting

    def resolve(params, count, dim):
        rerank = 16 if params.rerank is None else params.rerank
        if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
            raise BioscanInputError(f"rerank must be an int >= 0, got {rerank!r}")
        return {"rerank": min(rerank, count), "train_size": count}

    def new_index(dim, params, seed):
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)

    return IndexTypeEntry(
        description="8-bit scalar quantiser, re-ranked exactly",
        exact=False,
        resolve=resolve,
        new_index=new_index,
        search_settings={"rerank": SearchSetting("approximate indexes", lambda value, params, count: int(value))},
    )


def test_an_index_type_added_to_the_table_builds_saves_searches_and_reaches_the_cli(
    monkeypatch, clustered_data, tmp_path
):
    import argparse

    from bioscan_clip.apps.commands import index as index_command
    from bioscan_clip.retrieval import INDEX_TYPES, build_index_types

    monkeypatch.setitem(INDEX_TYPES, "sq8", _scalar_quantised_entry())
    keys, queries = clustered_data
    index = KeyIndex.build(keys, _metadata(len(keys)), index_type="sq8")
    assert isinstance(index.index, faiss.IndexScalarQuantizer) and not index.exact
    assert index.manifest["index_params"] == {"rerank": 16, "train_size": len(keys)}
    loaded = KeyIndex.load(index.save(tmp_path / "keys"))
    assert loaded.index_type == "sq8" and loaded.recall_at_k(queries, 5) > 0.95  # re-ranked from exact vectors
    _, rows = loaded.search(queries, 3, restrict={"order": "Odonata"})
    assert set(np.asarray(loaded.keys["order"])[rows.ravel()]) == {"Odonata"}
    loaded.set_search_params(rerank=0)
    assert loaded.manifest["index_params"]["rerank"] == 0
    assert "sq8" in build_index_types() and "sq8" in compare_index_types(keys, queries, 5, index_types=["sq8"])
    parser = argparse.ArgumentParser()
    index_command.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--out", "o", "--index_type", "sq8", "--rerank", "8"])
    assert args.index_type == "sq8" and args.rerank == 8
    assert "sq8 = 8-bit scalar quantiser" in parser.format_help()


def test_the_index_command_takes_every_index_setting_from_the_record():
    """Its options are IndexParams' fields (help from their metadata), unset unless given."""
    import argparse
    import dataclasses

    from bioscan_clip.apps.commands import index as index_command
    from bioscan_clip.retrieval import IndexParams

    parser = argparse.ArgumentParser()
    index_command.add_arguments(parser)
    for item in dataclasses.fields(IndexParams):
        [action] = [a for a in parser._actions if a.dest == item.name]
        assert action.help == item.metadata["help"] and action.default is None, item.name
    args = parser.parse_args(["--model", "m", "--out", "o", "--ef_construction", "40", "--no-pq_fast_scan"])
    assert args.ef_construction == 40 and args.pq_fast_scan is False
