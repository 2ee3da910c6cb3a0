"""BIOSCAN-CLIP: insect image, DNA barcode and taxonomy-text towers aligned by contrastive learning.

Re-implements the model of BIOSCAN-CLIP (arXiv 2405.17537) / CLIBD (ICLR 2025) on public transformers towers:
each enabled tower is any ``AutoModel`` built from its sub-configuration, pooled, and projected into one shared
space. The loss is the symmetric InfoNCE averaged over every pair of enabled modalities.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_bioscanclip import MODALITIES, BioscanClipConfig
from .errors_bioscanclip import BioscanInputError


@dataclass
class BioscanClipOutput(ModelOutput):
    """Output of [`BioscanClipModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when ``return_loss=True``):
            Symmetric InfoNCE averaged over every pair of modalities given.
        image_embeds, dna_embeds, text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
            L2-normalised embeddings of the modalities given (None for the others).
        logits (`dict[str, torch.FloatTensor]`):
            ``{"image_dna": (batch, batch), ...}``: scaled cosine similarities for every pair given, rows indexed
            by the first modality. The transposes give the other direction.
        logit_scale (`torch.FloatTensor` of shape `()`): the exponentiated temperature used.
    """

    loss: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    dna_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    logit_scale: torch.FloatTensor | None = None


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions of ``hidden`` (batch, seq, dim) where ``mask`` (batch, seq) is 1."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    counts = weights.sum(dim=1)
    if bool((counts == 0).any()):
        raise BioscanInputError("a sequence has an all-zero attention mask: nothing to pool")
    return (hidden * weights).sum(dim=1) / counts


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE for one pair of modalities.

    Args:
        logits (`torch.Tensor` of shape `(n_rows, n_columns)`): scaled similarities, rows = first modality.
        targets (`torch.Tensor`, *optional*):
            Soft targets of the same shape (rows summing to 1), e.g. for same-species multi-positives; by default
            the diagonal (row i matches column i). Rows may be a slice of a larger gathered batch: then pass the
            targets for that slice.
    """
    if targets is None:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError(f"expected square logits without explicit targets, got shape {tuple(logits.shape)}")
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t())) / 2


def _accepts(model_class: type, argument: str) -> bool:
    return argument in inspect.signature(model_class.__init__).parameters


class BioscanClipPreTrainedModel(PreTrainedModel):
    config_class = BioscanClipConfig
    base_model_prefix = "bioscan_clip"
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def _init_weights(self, module: nn.Module) -> None:
        # transformers 5 initialises every parameter that a checkpoint does not provide through this method, so
        # our own parameters (temperature, projections, DNA head) must be covered here, not only in __init__.
        super()._init_weights(module)
        if isinstance(module, BioscanClipModel):
            init.constant_(module.logit_scale, module.config.logit_scale_init_value)


class BioscanClipModel(BioscanClipPreTrainedModel):
    r"""The tri-modal BIOSCAN-CLIP model.

    Towers are built with ``AutoModel.from_config`` from ``config.{image,dna,text}_config`` for the enabled
    modalities only. Use [`BioscanClipModel.from_towers`] to start from pretrained towers saved on disk.

    Example:

    ```python
    >>> import torch
    >>> config = BioscanClipConfig(
    ...     modalities=["dna", "text"], projection_dim=16,
    ...     dna_config={"model_type": "bert", "vocab_size": 1027, "hidden_size": 32, "num_hidden_layers": 2,
    ...                 "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 140},
    ...     text_config={"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
    ...                  "num_attention_heads": 2, "intermediate_size": 64})
    >>> model = BioscanClipModel(config)
    >>> out = model(dna_input_ids=torch.randint(3, 1027, (4, 133)), input_ids=torch.randint(0, 100, (4, 20)),
    ...             return_loss=True)
    >>> out.dna_embeds.shape, sorted(out.logits), out.loss.ndim
    (torch.Size([4, 16]), ['dna_text'], 0)

    ```
    """

    def __init__(self, config: BioscanClipConfig) -> None:
        super().__init__(config)
        self.modalities = list(config.modalities)
        if "image" in self.modalities:
            self.image_model = self._build_tower(config.image_config)
            self.image_projection = nn.Linear(
                config.tower_hidden_size("image"), config.projection_dim, bias=config.projection_bias
            )
        if "dna" in self.modalities:
            self.dna_model = self._build_tower(config.dna_config)
            hidden = config.tower_hidden_size("dna")
            if config.dna_pooling == "softmax_mean":
                # The MLM transform of BarcodeBERT (dense + activation + LayerNorm), kept by the original.
                self.dna_head_transform = nn.Sequential(
                    nn.Linear(hidden, hidden),
                    nn.GELU(),
                    nn.LayerNorm(hidden, eps=getattr(config.dna_config, "layer_norm_eps", 1e-12)),
                )
            self.dna_projection = nn.Linear(hidden, config.projection_dim, bias=config.projection_bias)
        if "text" in self.modalities:
            self.text_model = self._build_tower(config.text_config)
            self.text_projection = nn.Linear(
                config.tower_hidden_size("text"), config.projection_dim, bias=config.projection_bias
            )
        self.logit_scale = nn.Parameter(
            torch.tensor(config.logit_scale_init_value), requires_grad=config.learn_temperature
        )
        self.post_init()

    @staticmethod
    def _build_tower(tower_config: Any) -> PreTrainedModel:
        model_class = MODEL_MAPPING[type(tower_config)]
        # A pooler we never use would hold parameters without gradients, which DDP rejects.
        kwargs = {"add_pooling_layer": False} if _accepts(model_class, "add_pooling_layer") else {}
        return model_class(tower_config, **kwargs)

    # ---- features -----------------------------------------------------------------------------------------------
    def _require(self, modality: str) -> None:
        if modality not in self.modalities:
            raise BioscanInputError(f"this model has no {modality} tower; its modalities are {self.modalities}")

    def get_image_features(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Projected image embeddings (batch, projection_dim) from ``pixel_values`` (batch, 3, H, W)."""
        self._require("image")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise BioscanInputError(f"pixel_values: expected shape (batch, 3, H, W), got {tuple(pixel_values.shape)}")
        outputs = self.image_model(pixel_values=pixel_values)
        pooling = self.config.image_pooling
        if pooling == "pooler":
            pooled = outputs.pooler_output.flatten(1)
        elif pooling == "cls":
            pooled = outputs.last_hidden_state[:, 0]
        else:
            pooled = outputs.last_hidden_state.mean(dim=1)
        embeds = self.image_projection(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_dna_features(
        self,
        dna_input_ids: torch.Tensor,
        dna_attention_mask: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Projected DNA embeddings (batch, projection_dim) from k-mer ids (batch, seq)."""
        self._require("dna")
        if dna_input_ids.ndim != 2:
            raise BioscanInputError(f"dna_input_ids: expected shape (batch, seq), got {tuple(dna_input_ids.shape)}")
        mask = dna_attention_mask if self.config.dna_use_attention_mask else None
        hidden = self.dna_model(input_ids=dna_input_ids, attention_mask=mask).last_hidden_state
        pooling = self.config.dna_pooling
        if pooling == "softmax_mean":
            per_position = self.dna_projection(self.dna_head_transform(hidden)).softmax(dim=-1)
            embeds = masked_mean(per_position, mask)
        elif pooling == "cls":
            embeds = self.dna_projection(hidden[:, 0])
        else:
            embeds = self.dna_projection(masked_mean(hidden, mask))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Projected taxonomy-text embeddings (batch, projection_dim) from token ids (batch, seq)."""
        self._require("text")
        if input_ids.ndim != 2:
            raise BioscanInputError(f"input_ids: expected shape (batch, seq), got {tuple(input_ids.shape)}")
        hidden = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        pooling = self.config.text_pooling
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "mean_all":
            pooled = hidden.mean(dim=1)
        else:
            pooled = masked_mean(hidden, attention_mask)
        embeds = self.text_projection(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def embed(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2-normalised embeddings of every modality present in ``inputs`` (processor output)."""
        embeds = {}
        if inputs.get("pixel_values") is not None:
            embeds["image"] = self.get_image_features(inputs["pixel_values"], normalize=True)
        if inputs.get("dna_input_ids") is not None:
            embeds["dna"] = self.get_dna_features(
                inputs["dna_input_ids"], inputs.get("dna_attention_mask"), normalize=True
            )
        if inputs.get("input_ids") is not None:
            embeds["text"] = self.get_text_features(
                inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids"), normalize=True
            )
        return embeds

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        dna_input_ids: torch.Tensor | None = None,
        dna_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        **kwargs: Any,
    ) -> BioscanClipOutput:
        r"""Embeds the modalities given and compares every pair.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, 3, H, W)`, *optional*): from the image processor.
            dna_input_ids, dna_attention_mask (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
                from the DNA tokenizer.
            input_ids, attention_mask, token_type_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
                taxonomy text from the text tokenizer.
            return_loss (`bool`, *optional*, defaults to `False`):
                Return the symmetric InfoNCE averaged over pairs (at least two modalities needed).

        Returns:
            [`BioscanClipOutput`]
        """
        if kwargs:
            raise TypeError(f"unexpected inputs for BioscanClipModel.forward: {sorted(kwargs)}")
        embeds = self.embed(
            pixel_values=pixel_values,
            dna_input_ids=dna_input_ids,
            dna_attention_mask=dna_attention_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        )
        if not embeds:
            raise BioscanInputError("no inputs given: expected pixel_values, dna_input_ids and/or input_ids")
        sizes = {name: value.shape[0] for name, value in embeds.items()}
        if len(set(sizes.values())) > 1:
            raise BioscanInputError(f"every modality needs the same batch size, got {sizes}")
        logit_scale = self.logit_scale.exp()
        logits = {
            f"{a}_{b}": logit_scale * embeds[a] @ embeds[b].t()
            for a, b in itertools.combinations([m for m in MODALITIES if m in embeds], 2)
        }
        loss = None
        if return_loss:
            if not logits:
                raise BioscanInputError("return_loss=True needs at least two modalities in one call")
            loss = torch.stack([contrastive_loss(pair_logits) for pair_logits in logits.values()]).mean()
        return BioscanClipOutput(
            loss=loss,
            image_embeds=embeds.get("image"),
            dna_embeds=embeds.get("dna"),
            text_embeds=embeds.get("text"),
            logits=logits,
            logit_scale=logit_scale,
        )

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamps the log temperature to [0, ``config.logit_scale_max``] (call after each optimiser step)."""
        self.logit_scale.clamp_(0.0, self.config.logit_scale_max)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # safetensors memory-maps tensors at arbitrary byte offsets, and CPU kernels take other code paths for
        # unaligned memory, which changes results in the last bit. Fresh storage makes a reloaded model
        # reproduce the saved one's embeddings exactly.
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()
        return loaded

    # ---- building from pretrained towers ----------------------------------------------------------------------
    @classmethod
    def from_towers(
        cls,
        image_tower: str | None = None,
        dna_tower: str | None = None,
        text_tower: str | None = None,
        config: BioscanClipConfig | None = None,
        **config_kwargs: Any,
    ) -> BioscanClipModel:
        r"""Builds the model around pretrained towers saved in local directories (``save_pretrained`` format).

        Args:
            image_tower (`str`, *optional*): any vision model directory (ViT, ConvNeXt, ResNet, ...).
            dna_tower (`str`, *optional*): a BarcodeBERT-style BERT over k-mers (``BertModel`` or
                ``BertForMaskedLM`` weights; an MLM head is dropped).
            text_tower (`str`, *optional*): a BERT text encoder (e.g. MiniLM, BERT-small).
            config ([`BioscanClipConfig`], *optional*): a configuration whose modalities and settings to keep; the
                towers given replace its sub-configurations, the others start from random weights.
            **config_kwargs: other [`BioscanClipConfig`] fields (``projection_dim``, poolings, ...).

        Without ``config``, the modalities are the towers given (at least two). Projections are freshly initialised.
        """
        towers = {"image": image_tower, "dna": dna_tower, "text": text_tower}
        given = {name: path for name, path in towers.items() if path is not None}
        if config is None:
            if len(given) < 2:
                raise ValueError(f"expected at least two tower directories, got {sorted(given) or 'none'}")
            config_kwargs["modalities"] = list(given)
        else:
            unused = sorted(set(given) - set(config.modalities))
            if unused:
                raise ValueError(f"towers given for {unused}, which the configuration's {config.modalities} lack")
            config_kwargs = {**config.to_dict(), **config_kwargs}
        for name, path in given.items():
            config_kwargs[f"{name}_config"] = AutoConfig.from_pretrained(path)
        for key in ("architectures", "auto_map", "transformers_version", "model_type"):
            config_kwargs.pop(key, None)
        config = BioscanClipConfig(**config_kwargs)
        model = cls(config)
        for name, path in given.items():
            tower = getattr(model, f"{name}_model")
            pretrained = type(tower).from_pretrained(path, config=getattr(config, f"{name}_config"))
            missing, unexpected = tower.load_state_dict(pretrained.state_dict(), strict=False)
            if missing:
                raise ValueError(f"{name} tower at {path}: weights missing for {sorted(missing)[:8]}")
        return model
