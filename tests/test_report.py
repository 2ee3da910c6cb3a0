"""``predict --report``: one self-contained HTML page, on real BIOSCAN-1M photos and a real BOLD export, opened in
headless Chromium.

Keys are real BIOSCAN-1M specimen photos (the order exemplars, labelled by order, and the three labelled plate-well
photos) plus one plate photo whose key record carries crafted names (markup in its taxonomy and processid): they
must be shown as text, never run. Queries are plate-well photos (1024x768 JPEGs), some labelled in the query
table. The model is an untrained image+text tower: what is checked is the page, not accuracy.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config_kwargs
from PIL import Image

from bioscan_clip.apps.cli import main
from bioscan_clip.apps.report import _Answer
from bioscan_clip.identification.build import build_key_folder
from dataset_scripts.schema import RECORD_FEATURES
from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel

PLATE_PHOTOS = "3dlg-hcvc__Bioscan-ImgFilter"
EXEMPLARS = "zahrag__BIOSCAN-1M/order_exemplar_images"
BOLD_EXPORT = "bge-barcoding__bold-library-curation/BOLD_test.tsv"  # the portal's older TSV, as exported
CRAFTED_TAXON = '<script>alert("taxon")</script>'
CRAFTED_PROCESSID = 'KEY<img src=x onerror=alert(1)>&"1"'
CRAFTED_QUERY = "Q<b onclick=x>&amp;7"  # an id from the query table, and a photo file name with markup in it
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [  # as tests/test_space.py launches it: no background traffic on a machine without network
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]  # fmt: skip


class PageStructure(HTMLParser):
    """What the tests read from the page: the query sections, each image's class and source, links, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str | None, str, str]] = []  # (section id, class of the figure or image, src)
        self.links: list[str] = []
        self.scripts = 0
        self._section: str | None = None
        self._figure_class = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "query" in (attrs.get("class") or ""):
            self._section = attrs["id"]
            self.sections.append(attrs["id"])
        elif tag == "figure":
            self._figure_class = attrs.get("class") or ""
        elif tag == "img":
            self.images.append((self._section, attrs.get("class") or self._figure_class, attrs["src"]))
        elif tag in ("a", "link"):
            self.links.append(attrs.get("href") or "")
        elif tag == "script":
            self.scripts += 1


def read_page(path: Path) -> tuple[str, PageStructure]:
    text = path.read_text(encoding="utf-8")
    structure = PageStructure()
    structure.feed(text)
    return text, structure


def decode_data_uri(src: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
    image.load()
    return image


@pytest.fixture(scope="module")
def photo_library(tmp_path_factory, realdata, tiny_processor) -> tuple[Path, Path, list[Path]]:
    """(model, key folder, unlabelled plate photos for queries) on real BIOSCAN-1M photos."""
    plates = pd.read_csv(realdata / PLATE_PHOTOS / "labels.csv", dtype=str, keep_default_na=False)
    labelled = plates[plates["order"] != ""]
    unlabelled = plates[plates["order"] == ""]
    records = {name: [] for name in RECORD_FEATURES}

    def add(processid: str, image: Path, **taxonomy: str | None) -> None:
        for name in RECORD_FEATURES:
            value = {"processid": processid, "image": str(image), "split": "train"}.get(name, taxonomy.get(name))
            records[name].append(value or None)

    for photo in sorted((realdata / EXEMPLARS).glob("*.jpg")):
        add(f"BIOSCAN1M-{photo.stem}", photo, order=photo.stem.split("_")[1])
    for row in labelled.to_dict("records"):
        add(
            row["processid"], realdata / PLATE_PHOTOS / row["path"], **{r: row[r] for r in ("order", "family", "genus")}
        )
    crafted = unlabelled.iloc[0]
    add(CRAFTED_PROCESSID, realdata / PLATE_PHOTOS / crafted["path"], order="Diptera", family=CRAFTED_TAXON,
        genus="Aus & Bus", species="Aus <i>bus</i>")  # fmt: skip
    keys = datasets.Dataset.from_dict(records, features=RECORD_FEATURES)

    root = tmp_path_factory.mktemp("report-photos")
    torch.manual_seed(0)
    model = BioscanClipModel(BioscanClipConfig(**tiny_config_kwargs(modalities=("image", "text"))))
    model.save_pretrained(root / "model")
    tiny_processor.save_pretrained(root / "model")
    build_key_folder(model, tiny_processor, keys, root / "keys", show_progress=False)
    queries = [realdata / PLATE_PHOTOS / path for path in unlabelled["path"].iloc[1:7]]
    return root / "model", root / "keys", queries


def test_report_of_real_photos_is_one_self_contained_page(photo_library, realdata, tmp_path, capsys):
    model, keys, plate_photos = photo_library
    # The query table: the three labelled plate photos (with their labels), six unlabelled ones, and one photo whose
    # id and file name carry markup.
    plates = pd.read_csv(realdata / PLATE_PHOTOS / "labels.csv", dtype=str, keep_default_na=False)
    labelled = plates[plates["order"] != ""]
    crafted_photo = tmp_path / f"{CRAFTED_QUERY}.jpg"
    shutil.copy(plate_photos[0], crafted_photo)
    rows = [{"id": r["processid"], "image": str(realdata / PLATE_PHOTOS / r["path"]), "order": r["order"],
             "family": r["family"], "genus": r["genus"]} for r in labelled.to_dict("records")]  # fmt: skip
    rows += [{"id": photo.name.split(".")[0], "image": str(photo)} for photo in plate_photos]
    rows.append({"id": CRAFTED_QUERY, "image": crafted_photo.name})  # relative to the table's folder
    table = tmp_path / "queries.csv"
    pd.DataFrame(rows).to_csv(table, index=False)

    out, report = tmp_path / "predictions.parquet", tmp_path / "report.html"
    argv = ["predict", "--model", str(model), "--keys", str(keys), "--table", str(table), "--k", "30",
            "--out", str(out), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    predictions = pd.read_parquet(out)
    assert len(predictions) == len(rows) == 10

    text, page = read_page(report)
    # One section per query, in the output's order, each with its photo embedded as a decodable thumbnail.
    assert page.sections == [f"q{n}" for n in range(1, 11)]
    for number, query in enumerate(predictions["id"], start=1):
        section = text.split(f'id="q{number}"', 1)[1].split("</section>", 1)[0]
        assert html.escape(str(query), quote=True) in section
        photos = [src for where, kind, src in page.images if where == f"q{number}" and "query-photo" in kind]
        assert len(photos) == 1
        thumbnail = decode_data_uri(photos[0])
        assert max(thumbnail.size) == 320 and thumbnail.size[0] > thumbnail.size[1]  # 1024x768 scaled down
        keys_shown = [src for where, kind, src in page.images if where == f"q{number}" and kind == "key-photo"]
        assert len(keys_shown) == 5  # every key has a photo; the 5 nearest are shown
        nearest = json.loads(predictions["neighbours"].iloc[number - 1])
        assert len(nearest) == 23  # --k 30 over 23 keys: all of them, in the table below the photos
        for neighbour in nearest:
            assert html.escape(neighbour["processid"], quote=True) in section
    # No script, nothing from elsewhere: images are data: URIs, links point inside the page.
    assert page.scripts == 0 and "<script" not in text.lower()
    assert all(src.startswith("data:image/jpeg;base64,") for _, _, src in page.images)
    assert page.links and all(link.startswith("#") for link in page.links)
    assert "http://" not in text and "https://" not in text
    # The crafted names are shown escaped, everywhere they appear (the key's taxonomy and processid, the query id
    # and its file name).
    for crafted in (CRAFTED_TAXON, CRAFTED_PROCESSID, CRAFTED_QUERY, "Aus & Bus"):
        assert html.escape(crafted, quote=True) in text
    assert CRAFTED_PROCESSID not in text and "<img src=x" not in text and "<b onclick" not in text
    # The summary: counts per deepest confident rank add up to the queries; the agreement is what predict printed.
    summary = text.split('<header id="summary">', 1)[1].split("</header>", 1)[0]
    assert "<b>10</b> queries (photo: 10)" in summary
    deepest = predictions["deepest_confident_rank"].fillna("none").value_counts()
    for rank, count in deepest.items():
        assert f'<td>{rank}</td><td class="num">{count}</td>' in summary
    agreement = printed.split("agreement with the table's own labels (queries labelled at that rank): ")[1]
    for part in agreement.splitlines()[0].split(", "):
        rank, share, _, total = part.split()
        assert f'<td>{rank}</td><td class="num">' in summary and f'<td class="num">{share[:-1]} %</td>' in summary
        assert f'<td class="num">{total}</td>' in summary
    assert f"the report {report}" in printed
    assert not list(tmp_path.glob(".report.html.tmp-*"))  # written through a temporary file, renamed


@pytest.mark.slow  # a real browser start; the one check that the page renders (issue 27's done-when)
def test_report_opens_in_headless_chromium_with_its_photos_decoded(photo_library, tmp_path):
    """The page in a real browser: every photo decoded, nothing requested but the file, the crafted name shown as
    text; a full-page screenshot that is not blank."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/install_test_browser.sh (Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    model, keys, plate_photos = photo_library
    report = tmp_path / "report.html"
    argv = ["predict", "--model", str(model), "--keys", str(keys), "--images", *map(str, plate_photos[:3]),
            "--out", str(tmp_path / "predictions.csv"), "--k", "30", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0

    screenshot = tmp_path / "report.png"
    requested = []
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            decoded = page.evaluate(
                "() => Array.from(document.images, i => [i.closest('figure').className || i.className, i.complete,"
                " i.naturalWidth, i.naturalHeight])"
            )
            shown = page.evaluate("() => document.body.innerText")
            scripts = page.evaluate("() => document.scripts.length")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    query_photos = [d for d in decoded if d[0] == "query-photo"]
    assert len(query_photos) == 3 and all(complete and width > 0 for _, complete, width, _ in query_photos)
    assert len(decoded) == 3 * 6 and all(
        complete and width > 0 and height > 0 for _, complete, width, height in decoded
    )
    assert [url for url in requested if not url.startswith("data:")] == [report.as_uri()]
    assert scripts == 0
    assert CRAFTED_TAXON in shown  # the markup is text on the page
    image = np.asarray(Image.open(screenshot).convert("RGB"))
    assert image.shape[0] > 900  # the whole page, longer than one screen
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 1000  # photos and text, not blank
    if (copy := __import__("os").environ.get("BIOSCAN_CLIP_REPORT_SCREENSHOT")) is not None:
        shutil.copyfile(screenshot, copy)  # to look at it (not needed by the test)


def test_report_of_a_real_bold_export_shows_each_barcode_hit_table(realdata, tmp_path, capsys):
    """Barcodes only (no model): the library is a real BOLD export with one record's names crafted, the queries the
    real export itself; each query's hits are listed with identity, overlap, processid and BIN."""
    source = realdata / BOLD_EXPORT
    raw = pd.read_csv(source, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    library = raw.copy()
    victim = library.index[(library["species"] != "None") & (library["nucraw"].str.len() > 500)][0]
    library.loc[victim, ["genus", "species"]] = ["Aus & Bus", CRAFTED_TAXON]
    library_path = tmp_path / "library.tsv"
    library.to_csv(library_path, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    keys = tmp_path / "keys"
    assert main(["index", "--source", "bold", "--data_dir", str(library_path), "--cache_dir", str(tmp_path / "c"),
                 "--out", str(keys)]) == 0  # fmt: skip
    out, report = tmp_path / "predictions.csv", tmp_path / "report.html"
    argv = [
        "predict",
        "--keys",
        str(keys),
        "--table",
        str(source),
        "--k",
        "5",
        "--out",
        str(out),
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    predictions = pd.read_csv(out)

    text, page = read_page(report)
    assert len(page.sections) == len(predictions) > 60 and not page.images and page.scripts == 0
    assert f"<b>{len(predictions)}</b> queries (barcode: {len(predictions)})" in text
    for number, row in enumerate(predictions.to_dict("records"), start=1):
        section = text.split(f'id="q{number}"', 1)[1].split("</section>", 1)[0]
        assert "<h3>Barcode hits</h3>" in section and "% identity" in section
        for hit in json.loads(row["neighbours"]):
            cells = (f"<td>{html.escape(hit['processid'])}</td><td class=\"num\">{hit['percent_identity']:.1f}</td>"
                     f"<td class=\"num\">{hit['overlap']}</td><td>{html.escape(str(hit['bin'] or '—'))}</td>")  # fmt: skip
            assert cells in section
    # The crafted record answers its own barcode: the answer is the crafted (escaped) name, and differs from the
    # real export's label, which the page marks.
    crafted = predictions.index[predictions["id"] == raw.loc[victim, "processid"]][0] + 1
    section = text.split(f'id="q{crafted}"', 1)[1].split("</section>", 1)[0]
    assert f"<i>{html.escape(CRAFTED_TAXON)}</i>" in section and CRAFTED_TAXON not in text
    assert '<span class="flag">✗</span>' in section
    assert "Agreement with the table's own labels" in text and "agreement with the table's own labels" in printed


def test_disagreements_name_the_ranks_that_came_from_the_other_modality():
    """A photo with its barcode: where the answer is not what the barcode's hits say, the embedding answered that
    rank; taxa of two ranks that no listed key holds together are named too."""
    hits = [{"row": i, "processid": f"H{i}", "similarity": s, "percent_identity": 100 * s, "overlap": 650, "bin": None,
             "taxonomy": {"order": "Diptera", "family": "Sciaridae", "genus": g, "species": sp}}
            for i, (s, g, sp) in enumerate([(0.97, "Bradysia", "Bradysia a"), (0.95, "Bradysia", "Bradysia b")])]  # fmt: skip
    row = {"id": "Q1", "query_feature": "averaged", "order": "Diptera", "family": "Sciaridae", "genus": "Bradysia",
           "species": "Corynoptera <x>"}  # fmt: skip
    notes = _Answer(1, {"id": "Q1"}, row, hits).disagreements()
    assert notes == [
        "<b>species</b>: the photo + barcode embedding answered <i>Corynoptera &lt;x&gt;</i>, the barcode's hits say "
        "<i>Bradysia a</i> (the barcode is not confident there)",
        "<b>species</b> <i>Corynoptera &lt;x&gt;</i> and <b>genus</b> <i>Bradysia</i>: no listed key is both",
    ]
    agreeing = {**row, "species": "Bradysia a"}
    assert _Answer(1, {"id": "Q1"}, agreeing, hits).disagreements() == []
    labelled = _Answer(1, {"id": "Q1"}, agreeing, hits, labels={"genus": "Bradysia", "species": "Bradysia b"})
    assert labelled.differs_from_table() == ["species"]


@pytest.mark.parametrize("where", ["folder", "the table"])
def test_a_report_that_cannot_be_written_is_refused_before_anything_is_identified(tmp_path, capsys, where):
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">Q1\nACGTACGTACGTACGTACGT\n")
    out = tmp_path / "predictions.csv"
    report = tmp_path if where == "folder" else out
    argv = ["predict", "--keys", str(tmp_path / "no-keys"), "--fasta", str(fasta), "--out", str(out),
            "--report", str(report)]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"bioscan-clip predict: error: --report {report}: is ")
    assert not out.exists()
