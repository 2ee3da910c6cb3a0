"""The transformers pipelines shipped with the model (modeling_bioscanclip/pipeline_bioscanclip.py).

A Hub user with transformers but none of our packages loads ``pipeline("zero-shot-image-classification", ...)`` and
``pipeline("zero-shot-barcode-classification", ...)`` by repo id from a Hub cache (the published model repository,
offline), and their scores must be the model's own: the softmax over the labels of the logits that
``BioscanClipModel.forward`` gives, computed here in the parent with the package.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TAXONOMY_SAMPLE, tiny_config_kwargs
from hub_cache import hub_cache_layout
from PIL import Image

from bioscan_clip.apps import publish
from bioscan_clip.identification.key_folder import config_hash
from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel, taxonomy_to_text
from modeling_bioscanclip.pipeline_bioscanclip import BARCODE_TASK, IMAGE_TASK, custom_pipelines

REPO_ID, COMMIT = "my-lab/bioscan-clip-tiny", "0123456789abcdef0123456789abcdef01234567"
# Four-rank strings as in training, a bare species name, and (for barcodes) a taxonomy dict.
IMAGE_LABELS = [taxonomy_to_text(record) for record in TAXONOMY_SAMPLE] + ["Bradysia impatiens"]
BARCODE_LABELS = [*IMAGE_LABELS[1:], TAXONOMY_SAMPLE[0]]
TEMPLATE = "{} specimen"
BARCODES = ["ACGTTGCAAGTCCA" * 47, ">BIOUG1-A1 query\n" + "TTGACCGATAAC" * 55]

HUB_USER = textwrap.dedent(
    """
    import json, sys
    # This environment has the project installed in editable mode (a meta-path finder); a Hub user has not.
    sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
    sys.path[:] = [entry for entry in sys.path if "__editable__" not in entry]
    for name in ("modeling_bioscanclip", "bioscan_clip", "dataset_scripts"):  # a regular (non-editable) install
        try:
            __import__(name)
        except ImportError:
            continue
        sys.modules[name] = None
    try:
        import modeling_bioscanclip
    except ImportError:
        pass
    else:
        raise AssertionError(f"our package is importable: {modeling_bioscanclip.__file__}")
    from transformers import pipeline

    repo, task_args = sys.argv[1], json.loads(sys.argv[2])
    image_labels, barcode_labels, template, images, barcodes = task_args
    images_pipe = pipeline("zero-shot-image-classification", model=repo, trust_remote_code=True)
    barcodes_pipe = pipeline("zero-shot-barcode-classification", model=repo, trust_remote_code=True)
    modules = [type(p).__module__ for p in (images_pipe, barcodes_pipe)]
    assert all(module.startswith("transformers_modules") for module in modules), modules
    report = {
        "image": images_pipe(images[0], candidate_labels=image_labels),
        "images": images_pipe(images, candidate_labels=image_labels),
        "images_batched": images_pipe(images, candidate_labels=image_labels, batch_size=2),
        "image_top2": images_pipe(images[0], candidate_labels=image_labels, top_k=2),
        "image_template": images_pipe(images[0], candidate_labels=image_labels, hypothesis_template=template),
        "barcode": barcodes_pipe(barcodes[0], candidate_labels=barcode_labels),
        "barcodes": barcodes_pipe(barcodes, candidate_labels=barcode_labels),
    }
    print(json.dumps(report))
    """
)


def tiny_model(modalities=("image", "dna", "text")) -> BioscanClipModel:
    torch.manual_seed(0)
    # The original text pooling (padding included): a label padded to another length than in training scores otherwise.
    model = BioscanClipModel(BioscanClipConfig(**tiny_config_kwargs(modalities, text_pooling="mean_all"))).eval()
    with torch.no_grad():  # not the initial value, so that a pipeline ignoring the model's temperature is caught
        model.logit_scale.fill_(math.log(40.0))
    return model


def expected_scores(model, processor, query: dict, labels: list) -> list[float]:
    """The softmax over ``labels`` of row 0 of the model's own forward logits (the query repeated per label)."""
    (kind, value), = query.items()  # fmt: skip
    inputs = processor(**{kind: [value] * len(labels)}, text=labels)
    with torch.no_grad():
        output = model(**inputs)
    pair = "image" if kind == "images" else "dna"
    return output.pair_logits(pair, "text")[0].softmax(-1).tolist()


def check_answer(answer: list[dict], labels: list, scores: list[float]) -> None:
    """``answer`` is transformers' format, sorted by score, with the model's scores for the candidate labels."""
    assert [sorted(entry) for entry in answer] == [["label", "score"]] * len(labels)
    order = sorted(range(len(labels)), key=lambda index: -scores[index])
    assert [entry["label"] for entry in answer] == [labels[index] for index in order]
    assert [entry["score"] for entry in answer] == pytest.approx([scores[index] for index in order], abs=1e-5)
    assert sum(entry["score"] for entry in answer) == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def hub_user_report(tmp_path_factory, tiny_processor):
    root = tmp_path_factory.mktemp("pipeline")
    model = tiny_model()
    model.save_pretrained(root / "model")
    tiny_processor.save_pretrained(root / "model")
    exported = publish.export_model(root / "model", root / "repo", repo_id=REPO_ID)
    snapshot = hub_cache_layout(root / "hf-cache", REPO_ID, exported, repo_type="model", commit=COMMIT)
    images = []
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 256, size=(44, 40, 3), dtype=np.uint8)
        images.append(str(root / f"specimen-{index}.png"))
        Image.fromarray(pixels).save(images[-1])
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root / "hf-cache"), HF_HOME=str(root / "hf-home"))
    arguments = json.dumps([IMAGE_LABELS, BARCODE_LABELS, TEMPLATE, images, BARCODES])
    result = subprocess.run(
        [sys.executable, "-c", HUB_USER, REPO_ID, arguments],
        capture_output=True, text=True, env=env, cwd=root, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report, model, tiny_processor, images, snapshot


def test_the_published_repository_carries_the_pipelines(hub_user_report):
    *_, snapshot = hub_user_report
    config = json.loads((snapshot / "config.json").read_text())
    assert sorted(config["custom_pipelines"]) == [BARCODE_TASK, IMAGE_TASK]
    for entry in config["custom_pipelines"].values():
        module = entry["impl"].split(".")[0]
        assert (snapshot / f"{module}.py").is_file(), module


def test_image_pipeline_scores_are_the_models_own(hub_user_report):
    report, model, processor, images, _ = hub_user_report
    scores = [expected_scores(model, processor, {"images": image}, IMAGE_LABELS) for image in images]
    check_answer(report["image"], IMAGE_LABELS, scores[0])
    assert len(report["images"]) == len(images) == len(report["images_batched"])
    for index, image_scores in enumerate(scores):  # one list per image, in the order given, batched or not
        check_answer(report["images"][index], IMAGE_LABELS, image_scores)
        check_answer(report["images_batched"][index], IMAGE_LABELS, image_scores)
    assert [entry["label"] for entry in report["image_top2"]] == [entry["label"] for entry in report["image"][:2]]
    templated = [TEMPLATE.format(label) for label in IMAGE_LABELS]
    check_answer(
        [{**entry, "label": templated[IMAGE_LABELS.index(entry["label"])]} for entry in report["image_template"]],
        templated,
        expected_scores(model, processor, {"images": images[0]}, templated),
    )


def test_barcode_pipeline_scores_are_the_models_own(hub_user_report):
    report, model, processor, *_ = hub_user_report
    scores = [expected_scores(model, processor, {"dna": barcode}, BARCODE_LABELS) for barcode in BARCODES]
    check_answer(report["barcode"], BARCODE_LABELS, scores[0])
    assert len(report["barcodes"]) == len(BARCODES)
    for index, barcode_scores in enumerate(scores):
        check_answer(report["barcodes"][index], BARCODE_LABELS, barcode_scores)


def test_pipelines_are_named_only_for_the_towers_a_model_has():
    assert sorted(custom_pipelines(["image", "dna", "text"])) == [BARCODE_TASK, IMAGE_TASK]
    assert sorted(custom_pipelines(["dna", "text"])) == [BARCODE_TASK]
    assert custom_pipelines(["image", "dna"]) == {}


def test_saving_names_the_pipelines_without_changing_the_key_hash(tmp_path):
    """``custom_pipelines`` is written at save time, so a key library embedded before saving still matches."""
    model = tiny_model(("image", "text"))
    before = config_hash(model)
    model.save_pretrained(tmp_path)
    assert sorted(json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]) == [IMAGE_TASK]
    assert config_hash(BioscanClipModel.from_pretrained(tmp_path)) == before


def test_pipeline_refuses_bad_arguments(tmp_path, tiny_processor):
    from transformers import pipeline

    tiny_model().save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    pipe = pipeline(BARCODE_TASK, model=str(tmp_path), trust_remote_code=True)
    barcode = BARCODES[0]
    for arguments, message in (
        ({"candidate_labels": "Diptera Sciaridae"}, "expected a list of taxonomy names"),
        ({"candidate_labels": []}, "at least one label"),
        ({"candidate_labels": ["A b", "A b"]}, "repeated"),
        ({"candidate_labels": ["A b", "  "]}, r"candidate_labels\[1\]: taxonomy text is empty"),
        ({"candidate_labels": ["A b"], "hypothesis_template": "a photo"}, "hypothesis_template"),
        ({"candidate_labels": ["A b"], "top_k": 0}, "top_k"),
        ({}, "needs candidate_labels"),
    ):
        with pytest.raises(ValueError, match=message):
            pipe(barcode, **arguments)
    with pytest.raises(ValueError, match="expected a DNA barcode string"):
        pipe(("ACGT", "ACGT"), candidate_labels=["A b"])
    with pytest.raises(ValueError, match="barcode"):
        pipe("ACGTZZ", candidate_labels=["A b"])


def test_a_model_folder_without_the_pipeline_code_is_not_published(tmp_path, tiny_processor):
    from modeling_bioscanclip import BioscanInputError

    tiny_model().save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "pipeline_bioscanclip.py").unlink()
    with pytest.raises(BioscanInputError, match="custom_pipelines names pipeline_bioscanclip.py, which is missing"):
        publish.export_model(tmp_path / "model", tmp_path / "repo", repo_id=REPO_ID)
