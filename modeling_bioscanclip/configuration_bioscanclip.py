"""Configuration of the BIOSCAN-CLIP tri-modal model (insect image, DNA barcode, taxonomy text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

MODALITIES = ("image", "dna", "text")
IMAGE_POOLINGS = ("cls", "mean", "pooler")
# `softmax_mean` is the original DNA head: MLM transform + linear to the projection size, a softmax over the
# output dimensions at every position, then the mean over positions (CLIBD_REFERENCE.md §1.2).
DNA_POOLINGS = ("cls", "mean", "softmax_mean")
# `mean_all` is the original text pooling: the mean over every position, padding included (§1.3).
TEXT_POOLINGS = ("cls", "mean", "mean_all")

# Paper defaults: ViT-B/16, a BarcodeBERT-style BERT-base over 5-mers (3 specials + 1024 k-mers), BERT-small text.
DEFAULT_IMAGE_CONFIG = {"model_type": "vit", "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6}
DEFAULT_DNA_CONFIG = {"model_type": "bert", "vocab_size": 1027, "max_position_embeddings": 512}
DEFAULT_TEXT_CONFIG = {
    "model_type": "bert",
    "hidden_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "intermediate_size": 2048,
}


def _build_sub_config(value: Any, default: dict[str, Any], name: str) -> PreTrainedConfig:
    if isinstance(value, PreTrainedConfig):
        return value
    if value is None:
        value = dict(default)
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected a dict or a PreTrainedConfig, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{name}: expected a 'model_type' key (e.g. 'vit', 'bert'), got keys {sorted(value)}")
    return AutoConfig.for_model(model_type, **value)


def _hidden_size(config: PreTrainedConfig) -> int:
    """Width of a tower's output features: ``hidden_size``, or the last stage of a CNN (ResNet, ConvNeXt)."""
    if getattr(config, "hidden_size", None) is not None and not isinstance(config.hidden_size, (list, tuple)):
        return int(config.hidden_size)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(f"cannot tell the output width of a {config.model_type!r} tower (no hidden_size(s))")


class BioscanClipConfig(PreTrainedConfig):
    r"""Configuration of [`BioscanClipModel`]: three towers, their pooling, a shared projection and a temperature.

    Clean defaults; the original BIOSCAN-CLIP / CLIBD behaviour is reachable by configuration
    (``dna_pooling="softmax_mean"``, ``dna_use_attention_mask=False``, ``text_pooling="mean_all"``).

    Args:
        image_config (`dict` or `PreTrainedConfig`, *optional*):
            Any vision model ``AutoModel`` can build: ViT-B/16 by default; ResNet/ConvNeXt for tiny presets.
        dna_config (`dict` or `PreTrainedConfig`, *optional*):
            A BERT over DNA k-mers; by default BERT-base with a 1027-token vocabulary (4^5 k-mers + 3 specials).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            A BERT for taxonomy strings; BERT-small (4 layers, width 512) by default.
        modalities (`Sequence[str]`, *optional*, defaults to ``("image", "dna", "text")``):
            At least two of ``image``, ``dna`` and ``text``; only these towers are built.
        projection_dim (`int`, *optional*, defaults to 768): size of the shared embedding space.
        projection_bias (`bool`, *optional*, defaults to `True`): the original heads are biased linears.
        logit_scale_init_value (`float`, *optional*, defaults to ln(1/0.07)): initial log inverse temperature.
        logit_scale_max (`float`, *optional*, defaults to ln(100)): the training loop clamps the log scale here.
        learn_temperature (`bool`, *optional*, defaults to `True`): if `False`, the temperature stays fixed.
        image_pooling (`str`, *optional*, defaults to ``"cls"``):
            ``cls`` (first token), ``mean`` (mean over tokens) or ``pooler`` (the tower's pooled output, for CNNs).
        dna_pooling (`str`, *optional*, defaults to ``"mean"``): ``cls``, masked ``mean`` or ``softmax_mean``.
        dna_use_attention_mask (`bool`, *optional*, defaults to `True`):
            `False` reproduces the original, which attends to (and pools over) the ``N`` padding.
        text_pooling (`str`, *optional*, defaults to ``"mean"``): ``cls``, masked ``mean`` or ``mean_all``.
        dna_frames (`int`, *optional*, defaults to 1): reading frames averaged at inference: a barcode's DNA
            embedding is the mean of the unit embeddings of ``barcode[s:]`` for s = 0..F-1 (cleaned), unit length
            again, so that non-overlapping k-mers see every frame. The processor loaded beside the model reads it
            and gives ids of shape (batch, F, seq), which ``get_dna_features``, ``embed`` and ``forward`` average;
            the package's paths (``embed_dataset``, ``Identifier``, ``bioscan-clip embed``) go through the same
            code. 1 (the original, and converted CLIBD weights) embeds the barcode as given. Training takes one
            (random) frame per record.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the projection initialisation.

    Example:

    ```python
    >>> config = BioscanClipConfig(modalities=["image", "dna"], projection_dim=32,
    ...                            image_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
    ...                                          "num_attention_heads": 2, "intermediate_size": 64,
    ...                                          "image_size": 32, "patch_size": 8})
    >>> config.image_config.model_type, config.text_config is None, config.projection_dim
    ('vit', True, 32)

    ```
    """

    model_type = "bioscan_clip"
    # Declaring the towers as sub-configurations lets transformers pass settings on to them: an
    # ``attn_implementation`` given to ``from_pretrained``/``from_config``, and ``dtype``. A disabled modality's
    # sub-configuration is None, which transformers skips.
    sub_configs = {"image_config": AutoConfig, "dna_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        image_config: dict | PreTrainedConfig | None = None,
        dna_config: dict | PreTrainedConfig | None = None,
        text_config: dict | PreTrainedConfig | None = None,
        modalities: Sequence[str] = MODALITIES,
        projection_dim: int = 768,
        projection_bias: bool = True,
        logit_scale_init_value: float = math.log(1 / 0.07),
        logit_scale_max: float = math.log(100.0),
        learn_temperature: bool = True,
        image_pooling: str = "cls",
        dna_pooling: str = "mean",
        dna_use_attention_mask: bool = True,
        text_pooling: str = "mean",
        dna_frames: int = 1,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if isinstance(modalities, str) or not all(isinstance(m, str) for m in modalities):
            raise ValueError(f"modalities: expected a list of names from {MODALITIES}, got {modalities!r}")
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown or len(set(modalities)) < 2:
            raise ValueError(f"modalities: expected at least two of {MODALITIES}, got {list(modalities)}")
        for name, value, allowed in (
            ("image_pooling", image_pooling, IMAGE_POOLINGS),
            ("dna_pooling", dna_pooling, DNA_POOLINGS),
            ("text_pooling", text_pooling, TEXT_POOLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        if not isinstance(dna_frames, int) or not 1 <= dna_frames <= 8:
            raise ValueError(f"dna_frames: expected 1 to 8 reading frames, got {dna_frames!r}")
        if not isinstance(projection_dim, int) or projection_dim < 1:
            raise ValueError(f"projection_dim: expected a positive int, got {projection_dim!r}")
        if not logit_scale_init_value <= logit_scale_max:
            raise ValueError(
                f"expected logit_scale_init_value <= logit_scale_max, got {logit_scale_init_value} > {logit_scale_max}"
            )
        # Keep the tower order canonical so that configs compare equal however modalities were listed.
        self.modalities = [m for m in MODALITIES if m in modalities]
        self.image_config = (
            _build_sub_config(image_config, DEFAULT_IMAGE_CONFIG, "image_config") if "image" in modalities else None
        )
        self.dna_config = (
            _build_sub_config(dna_config, DEFAULT_DNA_CONFIG, "dna_config") if "dna" in modalities else None
        )
        self.text_config = (
            _build_sub_config(text_config, DEFAULT_TEXT_CONFIG, "text_config") if "text" in modalities else None
        )
        self.projection_dim = projection_dim
        self.projection_bias = bool(projection_bias)
        self.logit_scale_init_value = float(logit_scale_init_value)
        self.logit_scale_max = float(logit_scale_max)
        self.learn_temperature = bool(learn_temperature)
        self.image_pooling = image_pooling
        self.dna_pooling = dna_pooling
        self.dna_use_attention_mask = bool(dna_use_attention_mask)
        self.text_pooling = text_pooling
        self.dna_frames = dna_frames
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)

    def tower_config(self, modality: str) -> PreTrainedConfig:
        """The sub-configuration of one modality's tower; raises if that modality is not enabled."""
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not enabled; this model has {self.modalities}")
        return getattr(self, f"{modality}_config")

    def tower_hidden_size(self, modality: str) -> int:
        """Width of the features a tower hands to its projection."""
        return _hidden_size(self.tower_config(modality))
