"""Processor that routes images, DNA barcodes and taxonomy text to their preprocessors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import BatchFeature, ProcessorMixin

from .constants_bioscanclip import NOT_CLASSIFIED, TAXONOMIC_RANKS, TEXT_MAX_LENGTH

# Imported so that `save_pretrained` copies these files to the repository root, where remote-code loading looks
# for them (sub-tokenizers in subfolders are otherwise saved without their code; HF_STACK_NOTES.md §2a).
from .errors_bioscanclip import BioscanInputError
from .image_processing_bioscanclip import BioscanClipImageProcessor  # noqa: F401
from .tokenization_dna import BioscanDnaTokenizer  # noqa: F401


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
    """

    def __init__(
        self,
        image_processor: Any,
        dna_tokenizer: Any,
        tokenizer: Any,
        text_max_length: int = TEXT_MAX_LENGTH,
        **kwargs: Any,
    ) -> None:
        if text_max_length < 2:
            raise ValueError(f"text_max_length: expected >= 2, got {text_max_length}")
        self.text_max_length = int(text_max_length)
        super().__init__(image_processor, dna_tokenizer, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        dna: str | Sequence[str] | None = None,
        text: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocesses the modalities given.

        Args:
            images: one image or a list (path, bytes, PIL image or array), decoded by the safe loader.
            dna (`str` or `list[str]`): barcodes, plain or one FASTA record each.
            text: taxonomy records (dicts with order/family/genus/species) or strings, one or a list.
            return_tensors (`str`, *optional*, defaults to ``"pt"``).

        Returns:
            [`BatchFeature`] with ``pixel_values``, ``dna_input_ids``, ``dna_attention_mask``, ``input_ids`` and
            ``attention_mask`` for the modalities given.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for BioscanClipProcessor: {sorted(kwargs)}")
        if images is None and dna is None and text is None:
            raise BioscanInputError("expected at least one of images, dna or text")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        if dna is not None:
            encoded = self.dna_tokenizer(dna, return_tensors=return_tensors)
            data["dna_input_ids"] = encoded["input_ids"]
            data["dna_attention_mask"] = encoded["attention_mask"]
        if text is not None:
            records = [text] if isinstance(text, (str, Mapping)) else list(text)
            if not records:
                raise BioscanInputError("expected at least one taxonomy text, got an empty list")
            encoded = self.tokenizer(
                [taxonomy_to_text(record) for record in records],
                padding="max_length",
                truncation=True,
                max_length=self.text_max_length,
                return_tensors=return_tensors,
            )
            data["input_ids"] = encoded["input_ids"]
            data["attention_mask"] = encoded["attention_mask"]
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "dna_input_ids", "dna_attention_mask", "input_ids", "attention_mask"]
