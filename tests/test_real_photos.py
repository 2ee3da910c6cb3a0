"""The whole image path on real photos: decode, crop, embed, index, predict and the demo's handler.

Keys are the labelled butterfly field photos (Leeds Butterfly Dataset, laid out by ``scripts/real_photos.py``),
queries the unlabelled BIOSCAN-1M plate-well photos (1024x768 JPEGs) and held-out butterflies. The model is an
untrained image+text tower: what is checked is that real files go through every step, not accuracy (that is
``scripts/real_photos.py``'s job, figures in the README).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, tiny_config_kwargs
from PIL import Image

from bioscan_clip.apps.cli import main
from bioscan_clip.apps.demo.page import DemoHandler
from bioscan_clip.identification.identifier import Identifier
from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel

REPO_ROOT = Path(__file__).resolve().parents[1]
BUTTERFLIES = "dsw88__cs601r-project1-dataset"
PLATE_PHOTOS = "3dlg-hcvc__Bioscan-ImgFilter"


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory, tiny_processor) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("photo-model")
    BioscanClipModel(BioscanClipConfig(**tiny_config_kwargs(modalities=("image", "text")))).save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def butterfly_dataset(tmp_path_factory, realdata) -> Path:
    splits = load_script("real_photos").photo_dataset(realdata / BUTTERFLIES / "labels.csv")
    # Held-out species have keys and queries; every split is in the BIOSCAN-5M layout that --dataset_path reads.
    assert set(splits["key_unseen"]["species"]) == set(splits["test_unseen"]["species"]) == {
        "Vanessa cardui", "Heliconius erato",
    }  # fmt: skip
    assert not set(splits["train"]["species"]) & {"Vanessa cardui", "Heliconius erato"}
    folder = tmp_path_factory.mktemp("butterflies") / "dataset"
    splits.save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def plate_photos(tmp_path_factory, realdata) -> Path:
    photos = sorted((realdata / PLATE_PHOTOS / "images").rglob("*.jpg"))[:6]
    assert len(photos) == 6 and Image.open(photos[0]).size == (1024, 768)
    folder = tmp_path_factory.mktemp("plate-photos")
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return folder


def test_embed_index_predict_and_demo_on_real_photos(tmp_path, photo_model, butterfly_dataset, plate_photos, realdata):
    # embed: the 1024x768 plate photos, decoded and centre-cropped, each to a distinct unit vector.
    embedded = tmp_path / "plates.parquet"
    assert main(["embed", "--model", str(photo_model), "--images_dir", str(plate_photos), "--out", str(embedded)]) == 0
    table = pd.read_parquet(embedded)
    assert set(table["feature"]) == {"image"}
    vectors = np.stack(table["embedding"].to_numpy())
    assert vectors.shape[0] == 6 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert np.unique(vectors.round(5), axis=0).shape[0] == 6

    # index: the butterfly keys (image and text: there are no barcodes), with calibration on their val queries.
    keys = tmp_path / "keys"
    argv = ["index", "--model", str(photo_model), "--dataset_path", str(butterfly_dataset), "--out", str(keys)]
    assert main(argv) == 0
    assert (keys / "image").is_dir() and not (keys / "dna").exists()

    # predict: plate photos and a held-out butterfly; every answer is a butterfly taxon, the only one the keys have.
    queries = tmp_path / "queries"
    shutil.copytree(plate_photos, queries)
    held_out = sorted((realdata / BUTTERFLIES / "images").glob("010*.jpg"))[-1]  # a Vanessa cardui photo
    shutil.copy(held_out, queries / held_out.name)
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(photo_model), "--keys", str(keys), "--images_dir", str(queries),
                 "--out", str(out)]) == 0  # fmt: skip
    predictions = pd.read_csv(out)
    assert len(predictions) == 7 and set(predictions["order"]) == {"Lepidoptera"}

    # The demo's handler answers a real plate photo with a gallery of the nearest real key photos.
    handler = DemoHandler(Identifier.load(photo_model, keys))
    summary, ranks, gallery, _, _ = handler(str(next(plate_photos.iterdir())), None)
    assert "Lepidoptera" in summary and len(ranks) == 4
    assert gallery and all(isinstance(image, Image.Image) for image, _ in gallery)
