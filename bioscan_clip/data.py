"""From prepared records to model inputs: retrieval roles, modality filtering, one-time tokenisation, augmentation.

The training script, the evaluation command and the key index all read records through this module, so a
record is turned into tensors in exactly one way. DNA and taxonomy text are tokenised once, vectorised, when a
:class:`SpecimenDataset` is built; images are decoded per item through the package's safe loader.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image

from dataset_scripts import RETRIEVAL_SPLITS, load_bioscan
from modeling_bioscanclip import (
    BioscanClipProcessor,
    BioscanInputError,
    load_image_safely,
    normalize_barcode,
    taxonomy_to_text,
)
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)


def load_splits(
    source: str | None = None,
    data_dir: str | None = None,
    dataset_path: str | None = None,
    cache_dir: str | None = None,
    **builder_options: Any,
) -> tuple[datasets.DatasetDict, dict[str, tuple[str, ...]]]:
    """Loads every split of a dataset and the split names that make up each retrieval role.

    Args:
        source (`str`, *optional*): a builder name (``mini``, ``bioscan5m``, ``bioscan1m``, ``bold``).
        data_dir (`str`, *optional*): the builder's data root (the export file for ``bold``).
        dataset_path (`str`, *optional*): instead, a ``DatasetDict`` saved with ``save_to_disk``; its roles are
            those of ``source`` (default ``mini``, i.e. BIOSCAN-5M split names).
        cache_dir (`str`, *optional*): where builders keep their Arrow cache.
        **builder_options: options of the builder's config (e.g. ``partition="clibd"`` for BOLD exports).
    """
    if dataset_path is not None:
        splits = datasets.load_from_disk(dataset_path)
        if not isinstance(splits, datasets.DatasetDict):
            raise BioscanInputError(f"{dataset_path}: expected a DatasetDict saved with save_to_disk")
        return splits, RETRIEVAL_SPLITS[source or "mini"]
    if source is None:
        raise BioscanInputError("expected a builder name (source) or a dataset_path")
    if source not in RETRIEVAL_SPLITS:
        raise BioscanInputError(f"unknown source {source!r}; expected one of {sorted(RETRIEVAL_SPLITS)}")
    return load_bioscan(source, data_dir, cache_dir=cache_dir, **builder_options), RETRIEVAL_SPLITS[source]


def add_data_arguments(parser: Any, *, default_source: str | None = "mini") -> None:
    """The options every command uses to name a dataset."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--source",
        default=default_source,
        choices=sorted(RETRIEVAL_SPLITS),
        help=f"dataset builder (default: {default_source}; mini is generated, synthetic)",
    )
    group.add_argument("--data_dir", help="the builder's data root (for bold: the export .tsv)")
    group.add_argument("--dataset_path", help="instead, a DatasetDict saved with save_to_disk")
    group.add_argument("--cache_dir", help="where builders keep their Arrow cache")
    group.add_argument("--partition", help="BOLD exports: 'clibd' splits species into seen/unseen queries and keys")


def splits_from_args(args: Any) -> tuple[datasets.DatasetDict, dict[str, tuple[str, ...]]]:
    """:func:`load_splits` from the options of :func:`add_data_arguments`."""
    options = {"partition": args.partition} if getattr(args, "partition", None) else {}
    return load_splits(args.source, args.data_dir, args.dataset_path, args.cache_dir, **options)


def role_records(splits: datasets.DatasetDict, roles: dict[str, tuple[str, ...]], role: str) -> datasets.Dataset:
    """The records of one retrieval role (e.g. ``keys``), images left undecoded (decoded later, safely)."""
    names = [name for name in roles[role] if name in splits]
    if not names:
        raise BioscanInputError(f"no split for role {role!r}: expected {roles[role]}, have {sorted(splits)}")
    parts = [splits[name] for name in names]
    records = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if "image" in records.column_names:
        records = records.cast_column("image", datasets.Image(decode=False))
    return records


def has_image(records: datasets.Dataset) -> np.ndarray:
    """Per record, whether it has an image (bytes or a path), read from Arrow without touching the bytes."""
    if "image" not in records.column_names:
        return np.zeros(len(records), dtype=bool)
    column = records.data.column("image")
    present = pc.and_(
        pc.is_valid(column),
        pc.or_(pc.is_valid(pc.struct_field(column, "bytes")), pc.is_valid(pc.struct_field(column, "path"))),
    )
    return present.fill_null(False).to_numpy(zero_copy_only=False)


def with_modalities(records: datasets.Dataset, modalities: Sequence[str], *, what: str = "records") -> datasets.Dataset:
    """Keeps the records that have every modality needed (images for ``image``, barcodes for ``dna``)."""
    keep = np.ones(len(records), dtype=bool)
    if "image" in modalities:
        keep &= has_image(records)
    if "dna" in modalities:
        keep &= np.array([bool(barcode) for barcode in records["dna_barcode"]])
    dropped = int((~keep).sum())
    if dropped:
        logger.info(
            "%s: %d of %d lack a needed modality (%s) and are left out",
            what,
            dropped,
            len(records),
            ", ".join(modalities),
        )
    return records if not dropped else records.select(np.flatnonzero(keep))


class ImageAugmentation:
    """The original's train-time transform on Pillow: random resized crop, flips, rotation (±45°).

    Args:
        resize_shortest_edge (`int`): shorter side before cropping (256 in the paper).
        crop_size (`int`): output side (224 in the paper).
        scale (`tuple[float, float]`, defaults to (0.08, 1.0)): crop area fraction range (torchvision's default).
        ratio (`tuple[float, float]`, defaults to (3/4, 4/3)): crop aspect ratio range.
        max_rotation (`float`, defaults to 45): rotation range in degrees.
    """

    def __init__(
        self,
        resize_shortest_edge: int,
        crop_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        max_rotation: float = 45.0,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale: expected 0 < min <= max <= 1, got {scale}")
        self.resize_shortest_edge = resize_shortest_edge
        self.crop_size = crop_size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.max_rotation = max_rotation

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        factor = self.resize_shortest_edge / min(width, height)
        image = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BILINEAR)
        width, height = image.size
        box = (0, 0, width, height)
        for _ in range(10):  # rejection sampling of a crop that fits, as torchvision does
            area = width * height * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
                box = (left, top, left + crop_w, top + crop_h)
                break
        image = image.resize((self.crop_size, self.crop_size), Image.Resampling.BILINEAR, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


class SpecimenDataset(torch.utils.data.Dataset):
    """Model inputs for a set of records: pre-tokenised DNA and text, images decoded per item.

    Args:
        records (`datasets.Dataset`): records in the package's schema (see ``dataset_scripts``).
        processor ([`BioscanClipProcessor`]): supplies the tokenizers and the image processor.
        modalities (`Sequence[str]`): which inputs to produce.
        augmentation ([`ImageAugmentation`], *optional*): train-time image transform; eval transform otherwise.
        seed (`int`, defaults to 0): augmentation randomness is drawn from (seed, epoch, index), so it is the same
            whatever the number of workers and after a resume.

    Records whose barcode the tokenizer refuses are left out and counted in ``dropped_barcodes``.
    """

    def __init__(
        self,
        records: datasets.Dataset,
        processor: BioscanClipProcessor,
        modalities: Sequence[str],
        augmentation: ImageAugmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.modalities = list(modalities)
        self.processor = processor
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.dropped_barcodes = 0
        if "dna" in self.modalities:
            tokenizer = processor.dna_tokenizer
            barcodes, keep = [], []
            for row, barcode in enumerate(records["dna_barcode"]):
                try:
                    barcodes.append(
                        normalize_barcode(barcode, record=f"record {row}", max_nucleotides=tokenizer.max_nucleotides)
                    )
                    keep.append(row)
                except BioscanInputError as error:
                    self.dropped_barcodes += 1
                    logger.warning("left out: %s", error)
            if self.dropped_barcodes:
                records = records.select(keep)
            ids, mask = tokenizer.encode_normalized(barcodes) if barcodes else (np.zeros((0, 1)), np.zeros((0, 1)))
            self.dna_input_ids = torch.from_numpy(ids.astype(np.int64))
            self.dna_attention_mask = torch.from_numpy(mask.astype(np.int64))
        self.records = records
        columns = records.select_columns([c for c in ("processid", *TAXONOMIC_RANKS) if c in records.column_names])
        self.metadata: dict[str, list[Any]] = columns.to_dict()
        if "text" in self.modalities:
            texts = [
                taxonomy_to_text({rank: self.metadata.get(rank, [None] * len(records))[i] for rank in TAXONOMIC_RANKS})
                for i in range(len(records))
            ]
            encoded = processor.tokenizer(
                texts, padding="max_length", truncation=True, max_length=processor.text_max_length, return_tensors="np"
            )
            self.input_ids = torch.from_numpy(encoded["input_ids"].astype(np.int64))
            self.attention_mask = torch.from_numpy(encoded["attention_mask"].astype(np.int64))
        species = self.metadata.get("species", [None] * len(records))
        names = sorted({s for s in species if s})
        lookup = {name: i for i, name in enumerate(names)}
        # -1 for an unknown species: such a record is only ever its own positive.
        self.species_ids = torch.tensor([lookup.get(s, -1) if s else -1 for s in species], dtype=torch.long)
        # The Arrow column, read one row at a time: the image bytes of a large dataset never all sit in memory.
        self.images = records.data.column("image") if "image" in self.modalities else None

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, index: int) -> Image.Image:
        """The record's image, decoded by the safe loader (not augmented, not resized)."""
        if self.images is None:
            raise BioscanInputError("this dataset was built without the image modality")
        stored = self.images[index].as_py()
        return load_image_safely(stored["bytes"] or stored["path"], name=str(self.metadata["processid"][index]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item: dict[str, torch.Tensor] = {"index": torch.tensor(index), "species_id": self.species_ids[index]}
        if self.images is not None:
            image = self.image(index)
            image_processor = self.processor.image_processor
            if self.augmentation is not None:
                rng = np.random.default_rng([self.seed, self.epoch, index])
                image = self.augmentation(image, rng)
            else:
                image = image_processor.resize_and_crop(image)
            item["pixel_values"] = torch.from_numpy(image_processor.to_array(image))
        if "dna" in self.modalities:
            item["dna_input_ids"] = self.dna_input_ids[index]
            item["dna_attention_mask"] = self.dna_attention_mask[index]
        if "text" in self.modalities:
            item["input_ids"] = self.input_ids[index]
            item["attention_mask"] = self.attention_mask[index]
        return item


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a collated batch that the model's forward takes."""
    names = ("pixel_values", "dna_input_ids", "dna_attention_mask", "input_ids", "attention_mask")
    return {name: batch[name] for name in names if name in batch}
