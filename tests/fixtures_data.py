"""Small on-disk fixtures in the official BIOSCAN layouts, written into a test's tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image

from dataset_scripts.schema import BIOSCAN_1M_COLUMNS, BIOSCAN_5M_COLUMNS

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"

FIVE_M_SPLITS = ("pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout")


def jpeg_bytes(colour: tuple[int, int, int] = (200, 120, 40), size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_5m(root: Path, *, rows_per_split: int = 2, long_barcode: bool = True) -> pd.DataFrame:
    """Writes a BIOSCAN-5M layout with ``rows_per_split`` records per split; returns the metadata frame."""
    rows = []
    for split in FIVE_M_SPLITS:
        for i in range(rows_per_split):
            n = len(rows)
            rows.append(
                {
                    "processid": f"P{n:04d}",
                    "sampleid": f"S{n:04d}",
                    "taxon": "x",
                    "phylum": "Arthropoda",
                    "class": "Insecta",
                    "order": "Diptera",
                    "family": "Cecidomyiidae",
                    "subfamily": "",
                    "genus": "NA" if i else "Aphidoletes",  # the literal string "NA" must read as missing
                    "species": "" if split == "pretrain" else f"Aphidoletes sp{n}",
                    "dna_bin": "BOLD:AAA0001",
                    "dna_barcode": "ACGT" * 10,
                    "split": split,
                    "chunk": "3" if split in ("pretrain", "train") else "",
                }
            )
    frame = pd.DataFrame(rows)
    if long_barcode:
        frame.loc[0, "dna_barcode"] = "A" * 700
    csv = root / "bioscan5m" / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    for row in frame.itertuples():
        folder = root / "bioscan5m" / "images" / "cropped_256" / row.split
        folder = folder / row.chunk if row.chunk else folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row.processid}.jpg").write_bytes(jpeg_bytes())
    return frame


def five_m_csv(root: Path) -> Path:
    return root / "bioscan5m" / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"


def five_m_image(root: Path, frame: pd.DataFrame, index: int) -> Path:
    row = frame.iloc[index]
    folder = root / "bioscan5m" / "images" / "cropped_256" / row["split"]
    return (folder / row["chunk"] if row["chunk"] else folder) / f"{row['processid']}.jpg"


def write_1m(root: Path, *, n_species: int = 4, per_species: int = 12, lists: dict[str, list[str]] | None = None):
    """Writes a BIOSCAN-1M layout (TSV with nucraw/uri/chunk_number, images in part folders, optional lists)."""
    rows = []
    for s in range(n_species):
        for _ in range(per_species):
            n = len(rows)
            rows.append(
                {
                    "sampleid": f"BIOUG{n:05d}",
                    "processid": f"PROC{n:05d}-21",
                    "uri": f"BOLD:ABC{s:04d}",
                    "name": "Diptera",
                    "phylum": "Arthropoda",
                    "class": "Insecta",
                    "order": "Diptera",
                    "family": "Chironomidae",
                    "subfamily": "not_classified",
                    "tribe": "not_classified",
                    "genus": "Tanytarsus",
                    "species": f"Tanytarsus sp{s}" if s < n_species - 1 else "not_classified",
                    "subspecies": "not_classified",
                    "nucraw": "acgt-" * 4,
                    "image_file": f"{n}.jpg",
                    "chunk_number": str(1 + n % 2),
                }
            )
    frame = pd.DataFrame(rows)
    base = root / "bioscan1m"
    base.mkdir(parents=True, exist_ok=True)
    frame.to_csv(base / "BIOSCAN_Insect_Dataset_metadata.tsv", sep="\t", index=False)
    for row in frame.itertuples():
        folder = base / "images" / "cropped_256" / f"part{row.chunk_number}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / row.image_file).write_bytes(jpeg_bytes())
    if lists:
        (base / "CLIBD_partitioning").mkdir()
        for split, ids in lists.items():
            (base / "CLIBD_partitioning" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return frame


# --- the official releases' file lists ----------------------------------------------------------------------------
# The release puts these splits' images into numbered chunk folders (too many files for one folder).
OFFICIAL_5M_CHUNKED = ("pretrain", "train", "other_heldout")


def write_official_5m(root: Path, *, per_split: int = 3) -> pd.DataFrame:
    """BIOSCAN-5M as released: every column, every split, ``chunk`` filled for the chunked splits (two chunks
    each), images at ``images/cropped_256/{split}/{chunk}/{processid}.jpg`` or ``{split}/{processid}.jpg``."""
    rows = []
    for split in FIVE_M_SPLITS:
        for i in range(per_split):
            n = len(rows)
            unlabelled = split in ("pretrain", "other_heldout")
            row = dict.fromkeys(BIOSCAN_5M_COLUMNS, "")
            row.update(
                processid=f"BIOSCAN5M{n:05d}", sampleid=f"BIOUG{n:05d}-A01", taxon="Cecidomyiidae",
                phylum="Arthropoda", **{"class": "Insecta"}, order="Diptera", family="Cecidomyiidae",
                genus="" if unlabelled else "Aphidoletes", species="" if unlabelled else f"Aphidoletes sp{n % 2}",
                dna_bin=f"BOLD:AAA{n:04d}", dna_barcode="ACGTTGCA" * 80, country="Canada", split=split,
                inferred_ranks="0", chunk=str(1 + i % 2) if split in OFFICIAL_5M_CHUNKED else "",
            )  # fmt: skip
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(BIOSCAN_5M_COLUMNS))
    csv = five_m_csv(root)
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    for index in range(len(frame)):
        path = five_m_image(root, frame, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes())
    return frame


def write_official_1m(root: Path, *, base: str = "bioscan1m", n_species: int = 4, per_species: int = 10):
    """BIOSCAN-1M as released: every column of the TSV, images in ``images/cropped_256/part{chunk_number}/``.

    ``base="bioscan1m"`` is the current layout (``bioscan-dataset`` >= 1.2): ``{root}/bioscan1m/{tsv, images}``;
    ``base="bioscan"`` the older one: ``{root}/BIOSCAN_Insect_Dataset_metadata.tsv`` and ``{root}/bioscan/images``.
    Genus is ``not_classified`` for a third of the labelled records (the loader fills it from the species).
    """
    rows = []
    for s in range(n_species):
        for i in range(per_species):
            n = len(rows)
            row = dict.fromkeys(BIOSCAN_1M_COLUMNS, "not_classified")
            row.update(
                sampleid=f"BIOUG{n:05d}-B02", processid=f"BSCAN{n:05d}-21", uri=f"BOLD:ACD{s:04d}", name="Diptera",
                phylum="Arthropoda", **{"class": "Insecta"}, order="Diptera", family="Chironomidae",
                genus="not_classified" if i % 3 == 0 else "Tanytarsus", species=f"Tanytarsus sp{s}",
                nucraw="ACGTAACG" * 80, image_file=f"{n:05d}.jpg", large_diptera_family="Chironomidae",
                chunk_number=str(1 + n % 3), copyright_license="CC BY-NC-SA 4.0",
            )  # fmt: skip
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(BIOSCAN_1M_COLUMNS))
    layout = root / base
    metadata = (
        layout / "BIOSCAN_Insect_Dataset_metadata.tsv"
        if base == "bioscan1m"
        else root / "BIOSCAN_Insect_Dataset_metadata.tsv"
    )
    layout.mkdir(parents=True, exist_ok=True)
    frame.to_csv(metadata, sep="\t", index=False)
    for row in frame.itertuples():
        folder = layout / "images" / "cropped_256" / f"part{row.chunk_number}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / row.image_file).write_bytes(jpeg_bytes())
    return frame
