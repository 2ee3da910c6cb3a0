"""transformers pipelines: zero-shot identification of images and barcodes against taxonomy names.

A saved model names these pipelines in its ``config.json`` (``custom_pipelines``, written by
[`BioscanClipModel.save_pretrained`] together with this file), so ``transformers.pipeline`` finds them with
``trust_remote_code=True`` and no package of ours installed:

- ``"zero-shot-image-classification"``: answers as transformers' own `ZeroShotImageClassificationPipeline` does. The
  model's entry takes precedence over transformers' built-in task for this model only, because the built-in one
  pads the labels to their longest instead of the length the text tower was trained with and expects CLIP's
  ``logits_per_image``.
- ``"zero-shot-barcode-classification"``: the same for DNA barcodes (a sequence string, plain or one FASTA record).

Candidate labels are taxonomy text, encoded by the model's own processor exactly as its text tower was trained
(``"order family genus species"``, padded/truncated to the processor's ``text_max_length``): a string is used as
given, a taxonomy dict becomes that string through [`taxonomy_to_text`]. The four-rank string is the form training
saw; a bare species name is encoded by the same tokenizer but was only ever seen after its order, family and genus.
Scores are the softmax over the labels of ``logit_scale * cos(query, label)``, the logits of [`BioscanClipModel`].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Pipeline

from .errors_bioscanclip import BioscanInputError
from .processing_bioscanclip import taxonomy_to_text

IMAGE_TASK = "zero-shot-image-classification"
BARCODE_TASK = "zero-shot-barcode-classification"
# Labels are used as the text tower saw them in training; transformers' "This is a photo of {}." was never seen.
DEFAULT_HYPOTHESIS_TEMPLATE = "{}"
# Labels embedded per forward pass of the text tower: bounds memory for checklists of thousands of names.
LABEL_BATCH_SIZE = 256


class _ZeroShotTaxonomyPipeline(Pipeline):
    """Scores one query (an image or a barcode) against candidate taxonomy labels; see the module docstring."""

    query_modality = ""  # the model's modality of the query, set by each subclass
    _load_processor = True  # the model's processor routes images, barcodes and taxonomy text
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        modalities = list(self.model.config.modalities)
        if self.query_modality not in modalities or "text" not in modalities:
            raise ValueError(
                f"the {self.task} pipeline needs a model with the {self.query_modality} and text towers; "
                f"this model has {modalities}"
            )
        self._label_cache: tuple[tuple[str, ...], torch.Tensor] | None = None

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        # Labels are embedded once per call, for every query of it (see `_label_embeds`).
        self._label_cache = None
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels: Sequence[str | Mapping[str, Any]] | None = None,
        hypothesis_template: str | None = None,
        top_k: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if candidate_labels is not None:
            if isinstance(candidate_labels, (str, Mapping)) or not isinstance(candidate_labels, Sequence):
                raise BioscanInputError(
                    f"candidate_labels: expected a list of taxonomy names, got {type(candidate_labels).__name__}"
                )
            if not candidate_labels:
                raise BioscanInputError("candidate_labels: expected at least one label, got an empty list")
            forward_params["candidate_labels"] = postprocess_params["candidate_labels"] = list(candidate_labels)
        if hypothesis_template is not None:
            _check_template(hypothesis_template)
            forward_params["hypothesis_template"] = hypothesis_template
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise BioscanInputError(f"top_k: expected a positive int, got {top_k!r}")
            postprocess_params["top_k"] = top_k
        return {}, forward_params, postprocess_params

    def _label_embeds(self, texts: tuple[str, ...]) -> torch.Tensor:
        """Unit text embeddings (labels, projection_dim) of the label strings, computed once per call."""
        if self._label_cache is not None and self._label_cache[0] == texts:
            return self._label_cache[1]
        chunks = []
        for start in range(0, len(texts), LABEL_BATCH_SIZE):
            encoded = self.processor(text=list(texts[start : start + LABEL_BATCH_SIZE]), return_tensors="pt")
            encoded = self._ensure_tensor_on_device(dict(encoded), self.device)
            chunks.append(self.model.get_text_features(**encoded, normalize=True))
        embeds = torch.cat(chunks)
        self._label_cache = (texts, embeds)
        return embeds

    def _forward(
        self,
        model_inputs: dict[str, torch.Tensor],
        candidate_labels: list[str | Mapping[str, Any]] | None = None,
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    ) -> dict[str, torch.Tensor]:
        if candidate_labels is None:
            raise BioscanInputError(f"the {self.task} pipeline needs candidate_labels (a list of taxonomy names)")
        texts = []
        for index, label in enumerate(candidate_labels):
            try:
                texts.append(hypothesis_template.format(taxonomy_to_text(label)))
            except BioscanInputError as error:
                raise BioscanInputError(f"candidate_labels[{index}]: {error}") from None
        repeated = sorted(text for text, count in Counter(texts).items() if count > 1)
        if repeated:  # two entries would share one label's probability
            raise BioscanInputError(f"candidate_labels: each label must be given once, repeated: {repeated[:5]}")
        label_embeds = self._label_embeds(tuple(texts))  # (labels, dim)
        query = self.model.embed(**model_inputs)[self.query_modality]  # (batch, dim), unit length
        # The model's own logits (BioscanClipModel.forward): logit_scale times the cosine similarity.
        return {"logits": self.model.logit_scale.exp() * query @ label_embeds.t()}  # (batch, labels)

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        candidate_labels: list[str | Mapping[str, Any]] | None = None,
        top_k: int | None = None,
    ) -> list[dict[str, Any]]:
        """``[{"score", "label"}, ...]`` from the most to the least likely; ``top_k`` keeps the first ``top_k``
        (all labels when it is larger, as transformers' image-classification pipeline does)."""
        scores = model_outputs["logits"][0].float().softmax(dim=-1).tolist()
        ranked = sorted(zip(scores, candidate_labels, strict=True), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked[:top_k]]


class BioscanClipZeroShotImageClassificationPipeline(_ZeroShotTaxonomyPipeline):
    r"""Zero-shot identification of specimen images against taxonomy names, with no key specimens.

    Call it with an image (a path, bytes, a `PIL.Image.Image` or an array, decoded by the package's safe loader; no
    URLs: nothing is fetched) or a list of them.

    Args:
        candidate_labels (`list[str | dict]`):
            Taxonomy names, ideally ``"order family genus species"`` (e.g. ``"Lepidoptera Nymphalidae Danaus Danaus
            plexippus"``), or dicts with those ranks; each label once.
        hypothesis_template (`str`, *optional*, defaults to ``"{}"``): a string with ``{}`` where the label goes.
        top_k (`int`, *optional*): return only the ``top_k`` most likely labels.

    Returns:
        `list[dict]` (a list of them for a list of images): ``{"score": float, "label": label}`` per label, sorted
        by score; the scores sum to 1 over the labels given.
    """

    query_modality = "image"

    def preprocess(self, image: Any) -> dict[str, torch.Tensor]:
        return dict(self.processor(images=[image], return_tensors="pt"))


class BioscanClipZeroShotBarcodeClassificationPipeline(_ZeroShotTaxonomyPipeline):
    r"""Zero-shot identification of DNA barcodes against taxonomy names, with no key specimens.

    Call it with a barcode (a sequence string, plain or one FASTA record, cleaned and refused as the model's DNA
    tokenizer does) or a list of them. The arguments and the result are those of
    [`BioscanClipZeroShotImageClassificationPipeline`].
    """

    query_modality = "dna"

    def preprocess(self, barcode: Any) -> dict[str, torch.Tensor]:
        if not isinstance(barcode, str):
            raise BioscanInputError(f"expected a DNA barcode string (or a list of them), got {type(barcode).__name__}")
        return dict(self.processor(dna=[barcode], return_tensors="pt"))


def _check_template(template: Any) -> None:
    """Refuses a template without one ``{}`` for the label (every label would read the same) or with other fields."""
    try:
        valid = isinstance(template, str) and "{}" in template and template.format("") == template.replace("{}", "")
    except (IndexError, KeyError, ValueError):
        valid = False
    if not valid:
        raise BioscanInputError(
            f"hypothesis_template: expected a string with one '{{}}' for the label, got {template!r}"
        )


PIPELINE_CLASSES = {
    IMAGE_TASK: BioscanClipZeroShotImageClassificationPipeline,
    BARCODE_TASK: BioscanClipZeroShotBarcodeClassificationPipeline,
}


def custom_pipelines(modalities: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` entry of ``config.json`` for a model with ``modalities``: the tasks it can serve.

    ``transformers.pipeline`` reads ``impl`` as ``"<module of the repository>.<class>"`` and loads the model with the
    auto classes named in ``pt`` (the format of ``Pipeline.save_pretrained``).
    """
    module = __name__.rpartition(".")[2]  # the file's name, also when loaded as remote code
    return {
        task: {"impl": f"{module}.{cls.__name__}", "pt": ["AutoModel"], "type": "multimodal"}
        for task, cls in PIPELINE_CLASSES.items()
        if cls.query_modality in modalities and "text" in modalities
    }
