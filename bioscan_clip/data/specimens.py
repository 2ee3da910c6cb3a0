"""From prepared records to model inputs: where the data is, retrieval roles, modality filtering, augmentation.

Training, evaluation and the key index read records through :class:`SpecimenDataset`, which hands every record to
the processor (the only code that tokenises and preprocesses): DNA and taxonomy text once for all records, images
per item, with the train-time augmentation in place of the evaluation crop.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image

from modeling_bioscanclip import BioscanClipProcessor, BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

from .augmentation import DNA_STREAM, DnaAugmentation
from .barcodes import clean_barcodes

logger = logging.getLogger(__name__)


def image_file_records(paths: Sequence[str], names: Sequence[str]) -> datasets.Dataset:
    """Records of image files (``processid`` = the name errors use), to embed as a dataset's images are."""
    features = datasets.Features({"processid": datasets.Value("string"), "image": datasets.Image(decode=False)})
    images = [{"path": str(path), "bytes": None} for path in paths]
    return datasets.Dataset.from_dict({"processid": [str(n) for n in names], "image": images}, features=features)


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


def available_modalities(records: datasets.Dataset, modalities: Sequence[str], *, what: str = "records") -> list[str]:
    """The ``modalities`` (a model's) that ``records`` can feed: ``image`` only when some record has an image,
    ``dna`` only when some has a barcode. A metadata-only table (barcodes, no images) thus meets an
    image+DNA+text model with DNA and text, instead of no usable record at all.

    Raises:
        `BioscanInputError`: when neither images nor barcodes are left to embed.
    """
    present = []
    for modality in modalities:
        if modality == "image" and not has_image(records).any():
            logger.info("%s have no images: the image modality is left out", what)
            continue
        if modality == "dna" and not any(records["dna_barcode"]):
            logger.info("%s have no barcodes: the DNA modality is left out", what)
            continue
        present.append(modality)
    if not set(present) & {"image", "dna"}:
        raise BioscanInputError(
            f"{len(records)} {what}: none has what the model embeds ({', '.join(modalities)}); "
            "expected images or DNA barcodes"
        )
    return present


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
        # The crop is drawn on the image resized to the shortest edge, as the original does, then cut and resized
        # from the full image in one resample: the same crop, and half the pixel work of resizing twice.
        full_width, full_height = image.size
        factor = self.resize_shortest_edge / min(full_width, full_height)
        width, height = max(1, round(full_width * factor)), max(1, round(full_height * factor))
        box = (0, 0, width, height)
        for _ in range(10):  # rejection sampling of a crop that fits, as torchvision does
            area = width * height * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
                box = (left, top, left + crop_w, top + crop_h)
                break
        x_scale, y_scale = full_width / width, full_height / height
        full_box = (box[0] * x_scale, box[1] * y_scale, box[2] * x_scale, box[3] * y_scale)
        image = image.resize((self.crop_size, self.crop_size), Image.Resampling.BILINEAR, box=full_box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def lineage_ids(metadata: dict[str, list[Any]], count: int) -> torch.Tensor:
    """(count, ranks) ids, order first: each names the lineage down to its rank (so a genus name used in two
    families is two genera), -1 where the rank or any coarser one is missing."""
    ids = torch.full((count, len(TAXONOMIC_RANKS)), -1, dtype=torch.long)
    lineages: list[tuple] = [()] * count
    for column, rank in enumerate(TAXONOMIC_RANKS):
        names = metadata.get(rank, [None] * count)
        lookup: dict[tuple, int] = {}
        for row in range(count):
            if lineages[row] is None or not names[row]:
                lineages[row] = None
                continue
            lineages[row] = (*lineages[row], names[row])
            ids[row, column] = lookup.setdefault(lineages[row], len(lookup))
    return ids


class SpecimenDataset(torch.utils.data.Dataset):
    """Model inputs for a set of records, made by the processor: DNA and taxonomy text once for all records, images
    per item (so the image bytes of a large dataset never all sit in memory).

    Args:
        records (`datasets.Dataset`): records in the package's schema (see ``dataset_scripts``).
        processor ([`BioscanClipProcessor`]): the only code that turns records into tensors.
        modalities (`Sequence[str]`): which inputs to produce.
        augmentation ([`ImageAugmentation`], *optional*): train-time image transform, applied by the processor in
            place of its resize and centre crop.
        dna_augmentation ([`~bioscan_clip.data.augmentation.DnaAugmentation`], *optional*): train-time barcode
            transform (random reading frame, end trimming, a few ``N``); a batch's augmented barcodes are
            tokenised together, in one processor call, where the batch is made (a loader worker when there is one).
        seed (`int`, defaults to 0): augmentation randomness is drawn from (seed, epoch, index), so it is the same
            whatever the number of workers and after a resume.

    Records whose barcode or taxonomy the processor refuses are left out (each named in a warning) and counted in
    ``dropped``.
    """

    def __init__(
        self,
        records: datasets.Dataset,
        processor: BioscanClipProcessor,
        modalities: Sequence[str],
        augmentation: ImageAugmentation | None = None,
        seed: int = 0,
        dna_augmentation: DnaAugmentation | None = None,
    ) -> None:
        self.modalities = list(modalities)
        self.processor = processor
        self.augmentation = augmentation
        self.dna_augmentation = dna_augmentation if "dna" in self.modalities else None
        self.seed = seed
        # In shared memory: persistent loader workers see each set_epoch without being restarted.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.dropped = 0
        columns = [c for c in ("processid", "dna_barcode", *TAXONOMIC_RANKS) if c in records.column_names]
        metadata: dict[str, list[Any]] = records.select_columns(columns).to_dict()
        n = len(records)
        self.tokens: dict[str, torch.Tensor] = {}
        dna = metadata.get("dna_barcode", [None] * n) if "dna" in self.modalities else None
        text = (
            [{rank: metadata.get(rank, [None] * n)[i] for rank in TAXONOMIC_RANKS} for i in range(n)]
            if "text" in self.modalities
            else None
        )
        if n and (dna is not None or text is not None):
            names = [str(name) for name in metadata.get("processid", range(n))]
            # One reading frame: training draws a random one per record (the augmentation); inference asks for
            # the model's frames per batch (`dna_inputs`).
            encoded = processor(dna=dna, text=text, names=names, on_error="drop", return_tensors="np", dna_frames=1)
            kept = encoded.pop("kept")
            self.dropped = n - len(kept)
            if self.dropped:
                records = records.select(kept)
                metadata = {column: [values[i] for i in kept] for column, values in metadata.items()}
            self.tokens = {name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in encoded.items()}
        # Augmented barcodes are cut from the whole cleaned barcode, not from its tokenised (660-nt) prefix.
        self.barcodes = (
            clean_barcodes(metadata["dna_barcode"], metadata.get("processid", range(len(records))))
            if self.dna_augmentation is not None and self.tokens
            else None
        )
        metadata.pop("dna_barcode", None)
        self.records = records
        self.metadata = metadata
        species = metadata.get("species", [None] * len(records))
        lookup = {name: i for i, name in enumerate(sorted({s for s in species if s}))}
        # -1 for an unknown species: such a record is only ever its own positive.
        self.species_ids = torch.tensor([lookup[s] if s else -1 for s in species], dtype=torch.long)
        self.taxon_ids = lineage_ids(metadata, len(records))
        # The Arrow column, read one row at a time.
        self.images = records.data.column("image") if "image" in self.modalities else None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def _record_names(self, indices: Sequence[int]) -> list[str]:
        """How errors name the records at ``indices``: their processid, else their position."""
        ids = self.metadata.get("processid")
        return [str(ids[i]) if ids is not None else str(i) for i in indices]

    def _stored_image(self, index: int) -> Any:
        if self.images is None:
            raise BioscanInputError("this dataset was built without the image modality")
        stored = self.images[index].as_py()
        return stored["bytes"] or stored["path"]

    def dna_inputs(self, indices: Sequence[int], frames: int) -> dict[str, torch.Tensor]:
        """``dna_input_ids`` and ``dna_attention_mask`` of the records at ``indices`` in their first ``frames``
        reading frames, shape (len(indices), frames, seq) for frames > 1 (the processor's
        ``dna_frames``; the model averages them)."""
        if "dna_input_ids" not in self.tokens:
            raise BioscanInputError("this dataset was built without the DNA modality")
        indices = [int(i) for i in indices]
        names = self._record_names(indices)
        raw = self.records.select_columns(["dna_barcode"])[indices]["dna_barcode"]
        encoded = self.processor(dna=raw, names=names, return_tensors="pt", dna_frames=frames)
        return {"dna_input_ids": encoded["dna_input_ids"], "dna_attention_mask": encoded["dna_attention_mask"]}

    def image(self, index: int) -> Image.Image:
        """The record's image, decoded by the processor's safe loader (not augmented, not resized)."""
        return self.processor.image_processor.load(self._stored_image(index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """The items at ``indices``; ``DataLoader`` asks for a whole batch at once, so that the batch's augmented
        barcodes are tokenised in one processor call, in the worker that makes the batch (one call per batch is
        several times cheaper than one per item, and nothing runs in the main process between steps)."""
        indices = [int(index) for index in indices]
        items = [self._item(index) for index in indices]
        if self.barcodes is not None:
            for item, augmented in zip(items, self._augmented_tokens(indices), strict=True):
                item.update(augmented)
        return items

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        item: dict[str, torch.Tensor] = {
            "index": torch.tensor(index),
            "species_id": self.species_ids[index],
            "taxon_ids": self.taxon_ids[index],
        }
        if self.images is not None:
            augmentation = None
            if self.augmentation is not None:
                rng = np.random.default_rng([self.seed, self.epoch, index])
                augmentation = functools.partial(self.augmentation, rng=rng)
            pixels = self.processor(
                images=[self._stored_image(index)],
                names=[str(self.metadata["processid"][index])],
                augmentation=augmentation,
                return_tensors="np",
            )["pixel_values"]
            item["pixel_values"] = torch.from_numpy(pixels[0])
        for name, values in self.tokens.items():
            item[name] = values[index]
        return item

    def _augmented_tokens(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """This epoch's augmented barcodes of the records at ``indices``, tokenised: record ``i``'s is drawn from
        (seed, epoch, i, DNA_STREAM) alone, so it is the same whatever the batch, the workers or a resume."""
        augmented = [
            self.dna_augmentation(self.barcodes[i], np.random.default_rng([self.seed, self.epoch, i, DNA_STREAM]))
            for i in indices
        ]
        names = self._record_names(indices)
        encoded = self.processor(dna=augmented, names=names, return_tensors="pt", dna_frames=1)
        ids, mask = encoded["dna_input_ids"], encoded["dna_attention_mask"]
        return [{"dna_input_ids": ids[row], "dna_attention_mask": mask[row]} for row in range(len(indices))]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a collated batch that the model's forward takes."""
    names = ("pixel_values", "dna_input_ids", "dna_attention_mask", "input_ids", "attention_mask")
    return {name: batch[name] for name in names if name in batch}
