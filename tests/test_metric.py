"""Tests for the ``taxonomic_retrieval`` evaluate metric and its numpy core."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bioscan_clip.evaluation.metric
from modeling_bioscanclip import constants_bioscanclip
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = REPO_ROOT / "metrics" / "taxonomic_retrieval"  # the source of truth, loaded by relative path
METRIC_DIR = bioscan_clip.evaluation.metric.METRIC_DIR  # the installed folder (the same one under `pip install -e .`)

metric_module = bioscan_clip.evaluation.metric.metric_module()
compute = metric_module.compute_taxonomic_accuracy
harmonic_mean = metric_module.harmonic_mean
MetricInputError = metric_module.TaxonomicRetrievalInputError


def _row(order, family, genus, species):
    return {"order": order, "family": family, "genus": genus, "species": species}


# Hand-built case. Seen species: A (3 queries), B (1 query). Unseen species: C (2 queries). Three neighbours each.
# Only the species rank varies; the higher ranks are constant so that every query is right there.
SPECIES_PREDICTIONS = [
    ["A", "B", "B"],  # seen A: top1 hit
    ["B", "A", "B"],  # seen A: top3 hit (position 2)
    ["B", "B", "B"],  # seen A: miss
    ["A", "A", "B"],  # seen B: top3 hit (position 3)
    ["C", "A", "A"],  # unseen C: top1 hit
    ["A", "A", "A"],  # unseen C: miss
]
SPECIES_TRUTH = ["A", "A", "A", "B", "C", "C"]
IS_UNSEEN = [False, False, False, False, True, True]


def _case():
    predictions = [_row(["O"] * 3, ["F"] * 3, ["G"] * 3, species) for species in SPECIES_PREDICTIONS]
    references = [_row("O", "F", "G", species) for species in SPECIES_TRUTH]
    return predictions, references, IS_UNSEEN


def test_hand_computed_micro_macro_and_harmonic_mean():
    result = compute(*_case(), k_list=[1, 2, 3])
    # Seen micro: top1 1/4; top2 2/4 (query 2 hits at position 2); top3 3/4.
    assert result["seen/species/micro/top1"] == pytest.approx(1 / 4)
    assert result["seen/species/micro/top2"] == pytest.approx(2 / 4)
    assert result["seen/species/micro/top3"] == pytest.approx(3 / 4)
    # Seen macro: class A (1/3, 2/3, 2/3) and class B (0, 0, 1), averaged.
    assert result["seen/species/macro/top1"] == pytest.approx((1 / 3 + 0) / 2)
    assert result["seen/species/macro/top2"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["seen/species/macro/top3"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["seen/species/micro/top3"] != pytest.approx(result["seen/species/macro/top3"])
    # Unseen: one class, so micro == macro == 1/2 at every k.
    for k in (1, 2, 3):
        assert result[f"unseen/species/micro/top{k}"] == pytest.approx(0.5)
        assert result[f"unseen/species/macro/top{k}"] == pytest.approx(0.5)
    assert result["hm/species/micro/top1"] == pytest.approx(2 / (4 + 2))  # 2 / (1/0.25 + 1/0.5)
    assert result["hm/species/macro/top3"] == pytest.approx(2 / (1 / (5 / 6) + 2))
    assert result["seen/species/n_queries"] == 4 and result["unseen/species/n_queries"] == 2
    for rank in ("order", "family", "genus"):
        assert result[f"seen/{rank}/micro/top1"] == 1.0
        assert result[f"hm/{rank}/macro/top1"] == 1.0


def test_output_keys_are_flat_and_complete():
    result = compute(*_case(), k_list=[1, 3])
    expected = set()
    for rank in TAXONOMIC_RANKS:
        for group in ("seen", "unseen"):
            expected.add(f"{group}/{rank}/n_queries")
        for group in ("seen", "unseen", "hm"):
            for average in ("micro", "macro"):
                for k in (1, 3):
                    expected.add(f"{group}/{rank}/{average}/top{k}")
    assert set(result) == expected


def test_column_oriented_input_equals_row_oriented():
    predictions, references, is_unseen = _case()
    columns_pred = {rank: [row[rank] for row in predictions] for rank in TAXONOMIC_RANKS}
    columns_ref = {rank: [row[rank] for row in references] for rank in TAXONOMIC_RANKS}
    assert compute(columns_pred, columns_ref, np.array(is_unseen), k_list=[1, 3]) == compute(
        predictions, references, is_unseen, k_list=[1, 3]
    )


def test_missing_reference_labels_are_excluded_per_rank():
    predictions, references, is_unseen = _case()
    references[2]["species"] = None  # the seen "miss" at species leaves the species rank only
    references[3]["species"] = "not_classified"
    references[1]["genus"] = ""
    result = compute(predictions, references, is_unseen, k_list=[1])
    assert result["seen/species/n_queries"] == 2
    assert result["seen/species/micro/top1"] == pytest.approx(1 / 2)
    assert result["seen/genus/n_queries"] == 3
    assert result["seen/family/n_queries"] == 4


def test_missing_predicted_label_never_matches():
    result = compute(
        {"species": [[None, "A"], ["", "A"]]},
        {"species": ["A", "A"]},
        [False, False],
        k_list=[1, 2],
        ranks=["species"],
    )
    assert result["seen/species/micro/top1"] == 0.0
    assert result["seen/species/micro/top2"] == 1.0


def test_absent_group_gives_none_not_zero():
    predictions, references, _ = _case()
    result = compute(predictions, references, [False] * 6, k_list=[1])
    assert result["unseen/species/n_queries"] == 0
    assert result["unseen/species/micro/top1"] is None
    assert result["unseen/species/macro/top1"] is None
    assert result["hm/species/micro/top1"] is None
    assert result["seen/species/micro/top1"] == pytest.approx(2 / 6)


@pytest.mark.parametrize(
    ("seen", "unseen", "expected"),
    [(0.5, 0.25, 1 / 3), (1.0, 1.0, 1.0), (0.0, 0.9, 0.0), (0.9, 0.0, 0.0), (None, 0.5, None), (0.5, None, None)],
)
def test_harmonic_mean_edge_cases(seen, unseen, expected):
    value = harmonic_mean(seen, unseen)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_too_few_predictions_is_an_error_naming_query_and_rank():
    predictions, references, is_unseen = _case()
    predictions[4]["genus"] = ["G", "G"]
    with pytest.raises(MetricInputError, match=r"predictions\[4\]\['genus'\] has 2 labels.*max\(k_list\) = 3"):
        compute(predictions, references, is_unseen, k_list=[1, 3])
    # Two are enough for k_list up to 2.
    compute(predictions, references, is_unseen, k_list=[1, 2])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p, r, u: u.__setitem__(0, 1), r"is_unseen\[0\] must be a bool"),
        (lambda p, r, u: u.__setitem__(0, "yes"), r"is_unseen\[0\] must be a bool"),
        (lambda p, r, u: u.pop(), r"has 6 queries .* is_unseen has 5"),
        (lambda p, r, u: r[1].__setitem__("species", 3), r"references\[1\]\['species'\]: expected a str"),
        (lambda p, r, u: p[2].__setitem__("order", "Diptera"), r"predictions\[2\]\['order'\] must be a list"),
        (lambda p, r, u: p[0].pop("family"), r"predictions\[0\] has no rank 'family'"),
    ],
)
def test_bad_inputs_raise_typed_errors(mutate, message):
    predictions, references, is_unseen = _case()
    is_unseen = list(is_unseen)
    mutate(predictions, references, is_unseen)
    with pytest.raises(MetricInputError, match=message):
        compute(predictions, references, is_unseen, k_list=[1])


@pytest.mark.parametrize("k_list", [[], [0], [1, 1], [True], "1", [1.0]])
def test_bad_k_list(k_list):
    with pytest.raises(MetricInputError, match="k_list"):
        compute(*_case(), k_list=k_list)


def test_matches_a_naive_loop_on_random_labels():
    rng = np.random.default_rng(3)
    n, k_max = 300, 5
    classes = [f"c{i}" for i in range(12)]
    predictions = {"species": rng.choice(classes, size=(n, k_max)).tolist()}
    truth = rng.choice(classes + [None], size=n).tolist()
    unseen = (rng.random(n) < 0.4).tolist()
    result = compute(predictions, {"species": truth}, unseen, k_list=[1, 3, 5], ranks=["species"])
    for group, flag in (("seen", False), ("unseen", True)):
        rows = [i for i in range(n) if unseen[i] == flag and truth[i] is not None]
        for k in (1, 3, 5):
            hits = {i: truth[i] in predictions["species"][i][:k] for i in rows}
            assert result[f"{group}/species/micro/top{k}"] == pytest.approx(np.mean(list(hits.values())))
            per_class = {}
            for i in rows:
                per_class.setdefault(truth[i], []).append(hits[i])
            macro = np.mean([np.mean(v) for v in per_class.values()])
            assert result[f"{group}/species/macro/top{k}"] == pytest.approx(macro)


def test_missing_labels_count_is_the_originals_not_classified_class():
    # The original writes every missing rank as the literal "not_classified" and scores it as a class: a naive
    # loop over those strings is the reference. Missing labels here come in every spelling the metric accepts.
    rng = np.random.default_rng(5)
    n, k_max = 200, 3
    labels = ["c0", "c1", "c2", None, "", "not_classified"]
    predictions = {"genus": rng.choice(labels, size=(n, k_max)).tolist()}
    truth = rng.choice(labels, size=n).tolist()
    unseen = (rng.random(n) < 0.5).tolist()

    def original(label):
        return "not_classified" if label in (None, "", "not_classified") else label

    counted = compute(predictions, {"genus": truth}, unseen, k_list=[1, 3], ranks=["genus"], missing_labels="count")
    skipped = compute(predictions, {"genus": truth}, unseen, k_list=[1, 3], ranks=["genus"])
    for group, flag in (("seen", False), ("unseen", True)):
        rows = [i for i in range(n) if unseen[i] == flag]
        assert counted[f"{group}/genus/n_queries"] == len(rows)
        assert skipped[f"{group}/genus/n_queries"] == sum(original(truth[i]) != "not_classified" for i in rows)
        for k in (1, 3):
            hits = [original(truth[i]) in [original(label) for label in predictions["genus"][i][:k]] for i in rows]
            assert counted[f"{group}/genus/micro/top{k}"] == pytest.approx(np.mean(hits))
    assert counted["seen/genus/micro/top1"] != skipped["seen/genus/micro/top1"]
    with pytest.raises(MetricInputError, match="missing_labels"):
        compute(predictions, {"genus": truth}, unseen, ranks=["genus"], missing_labels="zero")


@pytest.fixture(scope="module")
def loaded_metric():
    evaluate = pytest.importorskip("evaluate")
    return evaluate.load(str(METRIC_DIR))


def test_evaluate_load_offline_equals_direct_function(loaded_metric):
    predictions, references, is_unseen = _case()
    via_evaluate = loaded_metric.compute(
        predictions=predictions, references=references, is_unseen=is_unseen, k_list=[1, 2, 3]
    )
    assert via_evaluate == compute(predictions, references, is_unseen, k_list=[1, 2, 3])
    references[2]["species"] = "not_classified"
    counted = loaded_metric.compute(
        predictions=predictions, references=references, is_unseen=is_unseen, k_list=[1], missing_labels="count"
    )
    assert counted == compute(predictions, references, is_unseen, k_list=[1], missing_labels="count")
    assert counted["seen/species/n_queries"] == 4


def test_evaluate_add_batch_and_none_references(loaded_metric):
    predictions, references, is_unseen = _case()
    references[0]["species"] = None  # evaluate itself rejects None in a first row; the metric maps it to ""
    loaded_metric.add_batch(predictions=predictions[:3], references=references[:3], is_unseen=is_unseen[:3])
    loaded_metric.add_batch(predictions=predictions[3:], references=references[3:], is_unseen=is_unseen[3:])
    assert loaded_metric.compute(k_list=[1]) == compute(predictions, references, is_unseen, k_list=[1])


def test_evaluate_path_refuses_values_arrow_would_coerce(loaded_metric):
    # evaluate.load imports its own copy of the script, so its error class is that copy's.
    loaded_error = sys.modules[type(loaded_metric).__module__].TaxonomicRetrievalInputError
    predictions, references, is_unseen = _case()
    with pytest.raises(loaded_error, match=r"is_unseen\[1\] must be a bool"):
        loaded_metric.compute(
            predictions=predictions, references=references, is_unseen=[False, "yes", False, False, True, True]
        )
    references[2]["genus"] = 7
    with pytest.raises(loaded_error, match=r"references\[2\]\['genus'\]"):
        loaded_metric.compute(predictions=predictions, references=references, is_unseen=is_unseen)


def test_kwargs_description_doctests_run(monkeypatch, loaded_metric):
    monkeypatch.chdir(REPO_ROOT)  # the examples load the metric by its relative folder path
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for name, text in [
        ("_KWARGS_DESCRIPTION", metric_module._KWARGS_DESCRIPTION),
        ("harmonic_mean", metric_module.harmonic_mean.__doc__),
        ("compute_taxonomic_accuracy", metric_module.compute_taxonomic_accuracy.__doc__),
    ]:
        test = parser.get_doctest(text, vars(metric_module).copy(), name, str(METRIC_DIR), 0)
        assert test.examples, f"{name} has no examples"
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 12


def test_metric_card_examples_run(monkeypatch, loaded_metric):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the card inserts the metric folder
    results = doctest.testfile(str(METRIC_DIR / "README.md"), module_relative=False, verbose=False)
    assert results.failed == 0 and results.attempted >= 8


def test_evaluate_add_one_query_at_a_time(loaded_metric):
    predictions, references, is_unseen = _case()
    for prediction, reference, unseen in zip(predictions, references, is_unseen, strict=True):
        loaded_metric.add(prediction=prediction, reference=reference, is_unseen=unseen)
    assert loaded_metric.compute(k_list=[1, 3]) == compute(predictions, references, is_unseen, k_list=[1, 3])


# --- self-contained and installed --------------------------------------------------------------------------------


def test_constants_equal_the_packages():
    """The metric repeats two constants (it imports nothing of ours): they must not drift."""
    assert metric_module.TAXONOMIC_RANKS == constants_bioscanclip.TAXONOMIC_RANKS
    assert metric_module.MISSING_TAXON_STRINGS == constants_bioscanclip.MISSING_TAXON_STRINGS
    assert issubclass(MetricInputError, ValueError)


def test_installed_folder_and_module():
    assert (METRIC_DIR / "taxonomic_retrieval.py").is_file() and (METRIC_DIR / "README.md").is_file()
    assert Path(metric_module.__file__).resolve() == (METRIC_DIR / "taxonomic_retrieval.py").resolve()
    assert bioscan_clip.evaluation.metric.metric_module() is metric_module  # cached
    # The checkout's copy is the one installed (no second copy to keep in sync) when the install is editable.
    if SOURCE_DIR.is_dir() and "site-packages" not in str(METRIC_DIR):
        assert METRIC_DIR.resolve() == SOURCE_DIR.resolve()


def test_metric_api_docstring_example_runs():
    result = doctest.testmod(bioscan_clip.evaluation.metric, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


# Run in a fresh interpreter: our packages are made unimportable (an import hook that refuses them, before anything
# else is imported; the editable install's finder is removed too), then the metric folder is loaded as a Hub user
# would load it, from a copy that holds only the script and its card.
_ISOLATED_LOAD = textwrap.dedent(
    """
    import json, sys

    OURS = ("bioscan_clip", "modeling_bioscanclip", "dataset_scripts", "train_accelerate")

    class RefuseOurPackages:
        attempts = []

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in OURS:
                cls.attempts.append(name)
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path = [RefuseOurPackages] + [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    try:
        import modeling_bioscanclip  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the guard does not work: modeling_bioscanclip was imported")
    RefuseOurPackages.attempts.clear()

    import evaluate

    metric = evaluate.load(sys.argv[1])
    request = json.loads(sys.argv[2])
    result = metric.compute(**request)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in OURS)
    print(json.dumps({"result": result, "loaded": loaded, "attempts": RefuseOurPackages.attempts}))
    """
)


def test_evaluate_load_in_a_process_without_our_packages(tmp_path):
    folder = tmp_path / "hub-copy" / "taxonomic_retrieval"
    folder.mkdir(parents=True)
    for name in ("taxonomic_retrieval.py", "README.md"):
        shutil.copy(SOURCE_DIR / name, folder / name)
    predictions, references, is_unseen = _case()
    request = {"predictions": predictions, "references": references, "is_unseen": is_unseen, "k_list": [1, 3]}
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, "-c", _ISOLATED_LOAD, str(folder), json.dumps(request)],
        cwd=tmp_path,  # not the repository: nothing of ours on sys.path through the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["attempts"] == []  # nothing of ours was even asked for
    assert report["result"] == compute(predictions, references, is_unseen, k_list=[1, 3])
