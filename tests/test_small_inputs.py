"""Small inputs that used to fail or mislead: an image file name that is not UTF-8, a float TIFF in [0, 1], and
``--restrict`` to a taxon with fewer keys than k."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from reliability_fixtures import BARCODE, key_records, png_bytes, save_tiny_model

from bioscan_clip.apps.cli import main
from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.identifier import Identifier
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError, load_image_safely

NOT_UTF8_NAME = b"caf\xe9"  # Latin-1 "café", as an old camera or a Windows share writes it


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_processor):
    """A tiny image+DNA+text model and a key folder of 8 keys: 4 of Bradysia impatiens, 4 of the genus Carabus."""
    root = tmp_path_factory.mktemp("small-inputs")
    model_dir = save_tiny_model(root / "model", tiny_processor, seed=1)
    records = key_records(8)
    model = BioscanClipModel.from_pretrained(model_dir).eval()
    keys = build_key_folder(
        model, BioscanClipProcessor.from_pretrained(model_dir), records, root / "keys", show_progress=False
    )
    return {"model": model_dir, "keys": keys}


# ---- an image file name that is not UTF-8 -------------------------------------------------------------------------
def read_output(path):
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    return pd.read_parquet(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_an_image_name_that_is_not_utf8_is_written_escaped_with_the_batch(world, tmp_path, capsys, caplog, suffix):
    """Before, writing the output failed on the name's surrogate and the whole batch was lost, naming no file."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes(png_bytes(1))
    odd = os.path.join(os.fsencode(photos), NOT_UTF8_NAME + b".png")
    with open(odd, "wb") as handle:
        handle.write(png_bytes(2))
    out = tmp_path / f"predictions{suffix}"
    code = main(["predict", "--model", str(world["model"]), "--keys", str(world["keys"]),
                 "--images_dir", str(photos), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    warning = f"{photos}/caf\\xe9.png: the file name is not UTF-8; its query id is written as caf\\xe9"
    assert warning in caplog.text  # the warning names the file (on stderr outside pytest's log capture)
    frame = read_output(out)
    assert sorted(frame["id"]) == ["caf\\xe9", "good"]  # both answered, the odd byte escaped as text
    assert frame["order"].notna().all()  # each identified (the Carabus keys have no species)


# ---- a float TIFF in [0, 1] ----------------------------------------------------------------------------------------
def tiff_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    return buffer.getvalue()


def test_a_float_tiff_in_0_1_loads_as_the_same_picture_as_its_8_bit_version():
    """Before, [0, 1] floats were divided by 255: a near-black image, silently."""
    grey = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    eight_bit = np.asarray(load_image_safely(tiff_bytes(grey), name="grey.tif"))
    for scale in (255.0, 1.0):  # float counts in [0, 255], and the [0, 1] convention of float images
        as_float = (grey / (255.0 / scale)).astype(np.float32)
        assert Image.fromarray(as_float).mode == "F"
        loaded = np.asarray(load_image_safely(tiff_bytes(as_float), name="float.tif"))
        np.testing.assert_array_equal(loaded, eight_bit)
    assert eight_bit.mean() > 60  # a real picture, not near black


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((8, 8), -0.25, np.float32), r"float pixels range over \[-0.25, -0.25\]; expected \[0, 1\]"),
        (np.full((8, 8), 1e6, np.float32), r"float pixels range over \[1e\+06, 1e\+06\]"),
        (np.full((8, 8), np.nan, np.float32), "float pixels must be finite"),
    ],
    ids=["negative", "beyond-16-bit", "nan"],
)
def test_a_float_tiff_out_of_any_range_is_refused_naming_the_file(pixels, message):
    with pytest.raises(BioscanInputError, match=f"^odd.tif: {message}"):
        load_image_safely(tiff_bytes(pixels), name="odd.tif")


# ---- --restrict to a taxon with fewer keys than k ------------------------------------------------------------------
def test_restrict_to_a_species_with_fewer_keys_than_k_answers_with_those_keys(world, tmp_path, capsys):
    """Before, the default k=5 with 4 matching keys was refused ("k=5 is larger than the 4 searchable keys")."""
    photo = tmp_path / "q1.png"
    photo.write_bytes(png_bytes(3))
    out = tmp_path / "restricted.parquet"
    code = main(["predict", "--model", str(world["model"]), "--keys", str(world["keys"]), "--images", str(photo),
                 "--restrict", "species=Bradysia impatiens", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    [row] = read_output(out).to_dict("records")
    neighbours = json.loads(row["neighbours"])
    assert len(neighbours) == 4
    assert {n["taxonomy"]["species"] for n in neighbours} == {"Bradysia impatiens"}
    identifier = Identifier.load(world["model"], world["keys"])
    [answer] = identifier.identify(images=[str(photo)], restrict={"genus": ["Carabus"]}, k=7)
    assert [n.taxonomy["genus"] for n in answer.neighbours] == ["Carabus"] * 4
    [by_barcode] = identifier.identify(barcodes=[BARCODE], restrict={"genus": ["Carabus"]}, k=10)
    assert len(by_barcode.neighbours) <= 4 and {n.taxonomy["genus"] for n in by_barcode.neighbours} <= {"Carabus"}
    with pytest.raises(BioscanInputError, match="no key matches"):  # nothing to answer with is still refused
        identifier.identify(images=[str(photo)], restrict={"genus": ["Aedes"]})
