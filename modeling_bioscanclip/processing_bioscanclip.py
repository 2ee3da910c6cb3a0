"""Processor that routes images, DNA barcodes and taxonomy text to their preprocessors."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import cached_file, logging

from .constants_bioscanclip import NOT_CLASSIFIED, TAXONOMIC_RANKS, TEXT_MAX_LENGTH

# Imported so that `save_pretrained` copies these files to the repository root, where remote-code loading looks
# for them (sub-tokenizers in subfolders are otherwise saved without their code; HF_STACK_NOTES.md §2a).
from .errors_bioscanclip import BioscanInputError, record_label
from .image_processing_bioscanclip import BioscanClipImageProcessor, as_image_list  # noqa: F401
from .tokenization_dna import BioscanDnaTokenizer

logger = logging.get_logger(__name__)
ON_ERROR_MODES = ("raise", "drop")
DNA_TOKENIZER_SUBFOLDER = "dna_tokenizer"
# What locates a file of the repository: forwarded to every lookup of the DNA tokenizer's files.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "_commit_hash")


def taxonomy_to_text(record: Mapping[str, Any] | str) -> str:
    """The taxonomy string of the original: ``"order family genus species"``, ``not_classified`` where unknown.

    Example:

    ```python
    >>> taxonomy_to_text({"order": "Diptera", "family": "Sciaridae", "genus": None, "species": None})
    'Diptera Sciaridae not_classified not_classified'

    ```
    """
    if isinstance(record, str):
        if not record.strip():
            raise BioscanInputError("taxonomy text is empty")
        return record
    if not isinstance(record, Mapping):
        raise BioscanInputError(f"expected a taxonomy dict or a string, got {type(record).__name__}")
    words = []
    for rank in TAXONOMIC_RANKS:
        value = record.get(rank)
        if value is not None and not isinstance(value, str):
            raise BioscanInputError(f"taxonomy rank {rank!r}: expected a string or None, got {value!r}")
        words.append(value.strip() if value and value.strip() else NOT_CLASSIFIED)
    return " ".join(words)


class BioscanClipProcessor(ProcessorMixin):
    r"""Routes ``images`` to the image processor, ``dna`` to the DNA k-mer tokenizer and ``text`` to the text tokenizer.

    Args:
        image_processor ([`BioscanClipImageProcessor`]): resize/crop/normalise on Pillow.
        dna_tokenizer ([`BioscanDnaTokenizer`]): k-mer tokenizer, saved in the ``dna_tokenizer/`` subfolder.
        tokenizer ([`PreTrainedTokenizerBase`]): the taxonomy-text tokenizer (a BERT WordPiece tokenizer).
        text_max_length (`int`, *optional*, defaults to 20): taxonomy strings are padded/truncated to this.
        dna_frames (`int`, *optional*, defaults to 1): reading frames of each barcode given to the model (see
            [`BioscanDnaTokenizer.encode_frames`]): with more than one, ``dna_input_ids`` and
            ``dna_attention_mask`` have shape `(batch, frames, seq)` and the model averages the frames' embeddings.
            ``from_pretrained`` takes it from the model's ``config.json`` beside the processor when that has
            ``dna_frames`` (the model's configuration is the one place that says how its keys were embedded), so a
            processor loaded with its model gives the vectors the model's key library holds.
    """

    def __init__(
        self,
        image_processor: Any,
        dna_tokenizer: Any,
        tokenizer: Any,
        text_max_length: int = TEXT_MAX_LENGTH,
        dna_frames: int = 1,
        **kwargs: Any,
    ) -> None:
        if text_max_length < 2:
            raise ValueError(f"text_max_length: expected >= 2, got {text_max_length}")
        self.text_max_length = int(text_max_length)
        self.dna_frames = _checked_frames(dna_frames)
        super().__init__(image_processor, dna_tokenizer, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        dna: str | Sequence[str] | None = None,
        text: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | None = None,
        return_tensors: str | None = "pt",
        *,
        names: Sequence[Any] | None = None,
        on_error: str = "raise",
        augmentation: Callable[[Any], Any] | None = None,
        dna_frames: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocesses the modalities given; record ``i`` of every modality is one specimen.

        Args:
            images: one image or a list (path, bytes, PIL image or array), decoded by the safe loader.
            dna (`str` or `list[str]`): barcodes, plain or one FASTA record each.
            text: taxonomy records (dicts with order/family/genus/species) or strings, one or a list.
            return_tensors (`str`, *optional*, defaults to ``"pt"``).
            names (`Sequence`, *optional*):
                One name per record (e.g. the processids), as long as each list given; error messages and
                warnings name the record by it (``record BIOUG123-45 (barcode): invalid character 'Z' ...``).
            on_error (`str`, *optional*, defaults to ``"raise"``):
                ``"raise"``: the first refused record raises. ``"drop"``: a record whose image, barcode or text is
                refused is left out of every modality, a warning naming it is logged, and the result has a
                ``kept`` entry; if every record is refused, `BioscanInputError` is raised.
            augmentation (`Callable[[PIL.Image.Image], PIL.Image.Image]`, *optional*):
                Train-time image transform applied instead of the resize and centre crop (see
                [`BioscanClipImageProcessor.preprocess`]).
            dna_frames (`int`, *optional*, defaults to the processor's ``dna_frames``):
                Reading frames per barcode; 1 gives ``dna_input_ids`` of shape `(batch, seq)`, more
                `(batch, frames, seq)` (training takes one frame, see ``bioscan_clip.data.specimens``).

        Returns:
            [`BatchFeature`] with ``pixel_values``, ``dna_input_ids``, ``dna_attention_mask``, ``input_ids`` and
            ``attention_mask`` for the modalities given, and with ``on_error="drop"`` ``kept``: the int64 indices
            of the records kept, into the inputs (pop it before calling the model).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for BioscanClipProcessor: {sorted(kwargs)}")
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error: expected one of {ON_ERROR_MODES}, got {on_error!r}")
        frames = self.dna_frames if dna_frames is None else _checked_frames(dna_frames)
        batches: dict[str, list[Any]] = {}
        if images is not None:
            batches["image"] = as_image_list(images)
        if dna is not None:
            batches["barcode"] = [dna] if isinstance(dna, str) else list(dna)
        if text is not None:
            batches["taxonomy"] = [text] if isinstance(text, (str, Mapping)) else list(text)
        if not batches:
            raise BioscanInputError("expected at least one of images, dna or text")
        for part, records in batches.items():
            if not records:
                raise BioscanInputError(f"expected at least one {part}, got an empty list")
        sizes = {part: len(records) for part, records in batches.items()}
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            sizes["names"] = len(names)
        # Records are matched by position, so dropping one needs every list to be as long; without names or
        # dropping, lists of different lengths stay allowed (e.g. one image against several texts).
        if (names is not None or on_error == "drop") and len(set(sizes.values())) > 1:
            raise BioscanInputError(f"expected lists of the same length, one entry per record, got {sizes}")

        refused: dict[int, str] = {}  # record index -> why (the first reason found)

        def attempt(part: str, work: Callable[[Any, str | None], Any]) -> list[Any]:
            results = []
            for index, value in enumerate(batches.get(part, [])):
                if names is not None:
                    label = record_label(names[index], part)
                else:  # today's wording: the tokenizer's "barcode 3"; the image loader names a path itself
                    label = f"barcode {index}" if part == "barcode" else None
                try:
                    results.append(work(value, label))
                except BioscanInputError as error:
                    if on_error == "raise":
                        raise
                    refused.setdefault(index, str(error))
                    results.append(None)
            return results

        pixels = attempt("image", lambda source, label: self.image_processor.process_one(source, label, augmentation))
        dna_batch = None
        if "barcode" in batches:  # cleaned and encoded in one vectorised call, which names a refused barcode
            if frames == 1:  # (batch, seq), exactly as without frames
                dna_batch = self.dna_tokenizer.encode_batch(batches["barcode"], names=names, on_error=on_error)
            else:  # (batch, frames, seq)
                dna_batch = self.dna_tokenizer.encode_frames(batches["barcode"], frames, names=names, on_error=on_error)
            for index, reason in dna_batch.errors.items():
                refused.setdefault(index, reason)
        strings = attempt("taxonomy", _taxonomy_text)

        count = max(sizes.values())
        kept = [index for index in range(count) if index not in refused]
        for index, reason in sorted(refused.items()):
            logger.warning("dropped %s", reason if names is not None else f"record {index}: {reason}")
        if refused and not kept:
            raise BioscanInputError(f"every one of the {count} records was refused; the first: {refused[min(refused)]}")

        data: dict[str, Any] = {}
        if "image" in batches:
            data["pixel_values"] = np.stack([pixels[i] for i in kept])
        if dna_batch is not None:
            ids, mask = dna_batch.input_ids, dna_batch.attention_mask
            if len(kept) < len(ids):  # records refused for another modality
                rows = np.searchsorted(dna_batch.kept, kept)
                ids, mask = ids[rows], mask[rows]
            data["dna_input_ids"], data["dna_attention_mask"] = (
                (ids, mask) if return_tensors is not None else (ids.tolist(), mask.tolist())
            )
        if "taxonomy" in batches:
            encoded = self.tokenizer(
                [strings[i] for i in kept],
                padding="max_length",
                truncation=True,
                max_length=self.text_max_length,
                return_tensors=return_tensors,
            )
            data["input_ids"] = encoded["input_ids"]
            data["attention_mask"] = encoded["attention_mask"]
        if on_error == "drop":
            data["kept"] = np.asarray(kept, dtype=np.int64)
        return BatchFeature(data, tensor_type=return_tensors)

    @classmethod
    def get_processor_dict(
        cls, pretrained_model_name_or_path: Any, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """transformers' processor settings, with ``dna_frames`` taken from the model's ``config.json`` beside them.

        The model's configuration holds the reading frames its key library was embedded with; reading them here
        (however the repository is reached: folder, Hub, Hub cache, pinned revision) gives a processor loaded
        with its model those frames, also for folders saved before the processor kept ``dna_frames`` itself. A
        ``dna_frames`` passed to ``from_pretrained`` still wins; without a model configuration, the processor's
        own setting (default 1) stays.
        """
        processor_dict, remaining = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if os.path.isfile(pretrained_model_name_or_path):  # a processor_config.json given alone: no model beside it
            return processor_dict, remaining
        hub_kwargs = {key: kwargs[key] for key in (*_HUB_KWARGS, "subfolder") if key in kwargs}
        config_file = cached_file(
            pretrained_model_name_or_path,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        if config_file is not None:
            with open(config_file, encoding="utf-8") as handle:
                frames = json.load(handle).get("dna_frames")
            if frames is not None:
                processor_dict = {**processor_dict, "dna_frames": frames}
        return processor_dict, remaining

    @classmethod
    def _load_tokenizer_from_pretrained(
        cls, sub_processor_type: str, pretrained_model_name_or_path: Any, subfolder: str = "", **kwargs: Any
    ) -> Any:
        """The DNA tokenizer from its own subfolder, however the repository is reached, or one clear error.

        transformers' own loader asks ``AutoTokenizer`` for the subfolder, which wants a ``config.json`` there; in a
        Hub cache (offline) that lookup fails and it silently falls back to the root tokenizer, the TEXT tokenizer,
        so barcodes would be cut into 3 word pieces instead of k-mers. The DNA tokenizer is always ours, so its files
        are looked up directly (local folder, Hub, Hub cache, pinned revision) and a missing one is an error.
        """
        if sub_processor_type != DNA_TOKENIZER_SUBFOLDER:
            return super()._load_tokenizer_from_pretrained(
                sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        folder = posixpath.join(subfolder, DNA_TOKENIZER_SUBFOLDER) if subfolder else DNA_TOKENIZER_SUBFOLDER
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        try:
            config_file = cached_file(
                pretrained_model_name_or_path, "tokenizer_config.json", subfolder=folder, **hub_kwargs
            )
            cached_file(pretrained_model_name_or_path, "vocab.json", subfolder=folder, **hub_kwargs)
        except OSError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OSError(
                f"{pretrained_model_name_or_path}: cannot load the DNA tokenizer from {folder}/ "
                f"(tokenizer_config.json and vocab.json): {reason}; refusing to fall back to another tokenizer"
            ) from None
        with open(config_file, encoding="utf-8") as handle:
            named = json.load(handle).get("tokenizer_class")
        if named != BioscanDnaTokenizer.__name__:
            raise OSError(
                f"{pretrained_model_name_or_path}: {folder}/tokenizer_config.json names tokenizer_class {named!r}, "
                f"expected {BioscanDnaTokenizer.__name__!r}; refusing to use another tokenizer for DNA"
            )
        return BioscanDnaTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=folder, **hub_kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "dna_input_ids", "dna_attention_mask", "input_ids", "attention_mask"]


def _checked_frames(frames: Any) -> int:
    # The model configuration's bounds (BioscanClipConfig.dna_frames).
    if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= 8:
        raise ValueError(f"dna_frames: expected 1 to 8 reading frames, got {frames!r}")
    return frames


def _taxonomy_text(record: Mapping[str, Any] | str, label: str | None) -> str:
    """:func:`taxonomy_to_text`, naming the record in its error when a label is given."""
    try:
        return taxonomy_to_text(record)
    except BioscanInputError as error:
        if label is None:
            raise
        raise BioscanInputError(f"{label}: {error}") from error
