"""BIOSCAN-CLIP: insect image, DNA barcode and taxonomy-text towers aligned by contrastive learning.

Re-implements the model of BIOSCAN-CLIP (arXiv 2405.17537) / CLIBD (ICLR 2025) on public transformers towers:
each enabled tower is any ``AutoModel`` built from its sub-configuration, pooled, and projected into one shared
space. The loss is the symmetric InfoNCE averaged over every pair of enabled modalities.
"""

from __future__ import annotations

import inspect
import itertools
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_bioscanclip import MODALITIES, BioscanClipConfig
from .errors_bioscanclip import BioscanInputError

# Imported so that `save_pretrained` copies the pipelines' code beside the model's (transformers copies the files
# a module imports relatively), where `transformers.pipeline` loads the classes that `custom_pipelines` names.
from .pipeline_bioscanclip import custom_pipelines

# Output fields of the logits of each pair, rows indexed by the first modality (the MODALITIES order).
PAIR_LOGITS_FIELDS = {
    ("image", "dna"): "logits_per_image_dna",
    ("image", "text"): "logits_per_image_text",
    ("dna", "text"): "logits_per_dna_text",
}


@dataclass
class BioscanClipOutput(ModelOutput):
    r"""Output of [`BioscanClipModel.forward`], named as transformers' `CLIPOutput`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when ``return_loss=True``):
            Symmetric InfoNCE averaged over every pair of modalities given (see [`contrastive_loss`]).
        logits_per_image_dna (`torch.FloatTensor` of shape `(batch, batch)`, *optional*):
            ``logit_scale * image_embeds @ dna_embeds.T``: rows are images, columns barcodes.
        logits_per_image_text (`torch.FloatTensor` of shape `(batch, batch)`, *optional*):
            ``logit_scale * image_embeds @ text_embeds.T``: rows are images, columns taxonomy texts.
        logits_per_dna_text (`torch.FloatTensor` of shape `(batch, batch)`, *optional*):
            ``logit_scale * dna_embeds @ text_embeds.T``: rows are barcodes, columns taxonomy texts.
        image_embeds, dna_embeds, text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`, *optional*):
            L2-normalised embeddings of the modalities given.
        logit_scale (`torch.FloatTensor` of shape `()`): the exponentiated temperature used.
        image_model_output, dna_model_output, text_model_output ([`~utils.ModelOutput`], *optional*):
            The towers' own outputs (``last_hidden_state``, and ``hidden_states``/``attentions`` when asked for),
            as `CLIPOutput.vision_model_output` and `text_model_output`.

    A field is None when one of its modalities was not given. The mapping from the earlier ``logits`` dict:
    ``logits["image_dna"]`` is ``logits_per_image_dna``, ``logits["image_text"]`` is ``logits_per_image_text`` and
    ``logits["dna_text"]`` is ``logits_per_dna_text``. The read-only property ``logits`` still returns that dict
    (pairs present only), and ``pair_logits(a, b)`` returns any pair in either order (the transpose for the
    reverse, e.g. ``pair_logits("text", "image")`` has texts as rows).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image_dna: torch.FloatTensor | None = None
    logits_per_image_text: torch.FloatTensor | None = None
    logits_per_dna_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    dna_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    image_model_output: ModelOutput | None = None
    dna_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None

    @property
    def logits(self) -> dict[str, torch.FloatTensor]:
        """``{"image_dna": ..., "image_text": ..., "dna_text": ...}`` for the pairs present (the earlier field)."""
        pairs = {f"{a}_{b}": getattr(self, field) for (a, b), field in PAIR_LOGITS_FIELDS.items()}
        return {name: value for name, value in pairs.items() if value is not None}

    def pair_logits(self, a: str, b: str) -> torch.FloatTensor:
        """The scaled similarities with rows = modality ``a`` and columns = modality ``b``, in either order."""
        if (a, b) in PAIR_LOGITS_FIELDS:
            value = getattr(self, PAIR_LOGITS_FIELDS[(a, b)])
        elif (b, a) in PAIR_LOGITS_FIELDS:
            value = getattr(self, PAIR_LOGITS_FIELDS[(b, a)])
            value = None if value is None else value.t()
        else:
            raise ValueError(f"expected two different modalities from {MODALITIES}, got {a!r} and {b!r}")
        if value is None:
            raise ValueError(f"this output has no {a}-{b} logits; the pairs present are {sorted(self.logits)}")
        return value

    def to_tuple(self) -> tuple[Any, ...]:
        # As CLIPOutput: the towers' outputs become tuples too, so that the whole output is plain tuples.
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions of ``hidden`` (batch, seq, dim) where ``mask`` (batch, seq) is 1, in ``hidden``'s dtype.

    Summed in float32, so that a bf16/fp16 model neither overflows nor miscounts long sequences (bf16 holds integers
    exactly only up to 256); for a float32 model this is the plain masked mean.
    """
    if mask is None:
        return hidden.mean(dim=1)
    counts = mask.sum(dim=1, keepdim=True)  # (batch, 1), integer
    if bool((counts == 0).any()):
        raise BioscanInputError("a sequence has an all-zero attention mask: nothing to pool")
    weights = mask.to(torch.float32).unsqueeze(-1)
    return ((hidden.float() * weights).sum(dim=1) / counts).to(hidden.dtype)


# ---- the contrastive loss ---------------------------------------------------------------------------------------
def _world() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``tensor`` concatenated in rank order, this process's rows kept as the original.

    Other processes' rows are detached copies (``all_gather`` has no gradient), so the gradient reaches this
    process's own slice only. Every process must pass the same shape. Without an initialised process group, or
    with one process, ``tensor`` is returned unchanged.

    Args:
        tensor (`torch.Tensor` of shape `(local_batch, ...)`): this process's rows.

    Returns:
        `torch.Tensor` of shape `(world_size * local_batch, ...)`.
    """
    world_size, rank = _world()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank] = tensor
    return torch.cat(parts)


def contrastive_targets(species_ids: torch.Tensor, same_species_positives: bool) -> torch.Tensor | None:
    """Soft targets for [`contrastive_loss`]: the diagonal, plus every same-species record when asked.

    Args:
        species_ids (`torch.LongTensor` of shape `(batch,)`): species of each record; ``-1`` is unknown and matches
            no other record (an unknown species is only its own positive).
        same_species_positives (`bool`): whether records of the same species are positives of each other.

    Returns:
        `None` when ``same_species_positives`` is `False` (the plain diagonal), else a float32 `(batch, batch)`
        matrix whose rows sum to 1.

    Example:

    ```python
    >>> contrastive_targets(torch.tensor([4, 4, -1, -1]), same_species_positives=True)
    tensor([[0.5000, 0.5000, 0.0000, 0.0000],
            [0.5000, 0.5000, 0.0000, 0.0000],
            [0.0000, 0.0000, 1.0000, 0.0000],
            [0.0000, 0.0000, 0.0000, 1.0000]])

    ```
    """
    if not same_species_positives:
        return None
    if species_ids.ndim != 1:
        raise ValueError(f"species_ids: expected shape (batch,), got {tuple(species_ids.shape)}")
    same = (species_ids[:, None] == species_ids[None, :]) & (species_ids[:, None] >= 0)
    targets = (same | torch.eye(len(species_ids), dtype=torch.bool, device=species_ids.device)).float()
    return targets / targets.sum(dim=1, keepdim=True)


def taxonomic_targets(taxon_ids: torch.Tensor, rank_weight: float) -> torch.Tensor:
    """Soft targets for [`contrastive_loss`] by shared rank: a record of the same species weighs 1, of the same genus
    (another species) ``rank_weight``, of the same family ``rank_weight**2``, and so on up the lineage; each row
    normalised to sum to 1. A new species then learns to lie beside its genus, not only apart from every other.

    Args:
        taxon_ids (`torch.LongTensor` of shape `(batch, ranks)`): per record, an id per rank from the coarsest to
            the finest (order, family, genus, species), each naming the whole lineage down to that rank; ``-1`` is
            unknown and matches nothing (nor anything finer).
        rank_weight (`float`): in (0, 1); each rank up the lineage weighs this much less.

    Example:

    ```python
    >>> ids = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 2, 2], [1, 2, 3, -1]])  # order, family, genus, species
    >>> taxonomic_targets(ids, 0.5) * torch.tensor([[1.625], [1.625], [1.25], [1.0]])  # rows: 1 + 0.5 + 0.125, ...
    tensor([[1.0000, 0.5000, 0.1250, 0.0000],
            [0.5000, 1.0000, 0.1250, 0.0000],
            [0.1250, 0.1250, 1.0000, 0.0000],
            [0.0000, 0.0000, 0.0000, 1.0000]])

    ```
    """
    if taxon_ids.ndim != 2:
        raise ValueError(f"taxon_ids: expected shape (batch, ranks), got {tuple(taxon_ids.shape)}")
    if not 0 < rank_weight < 1:
        raise ValueError(f"rank_weight: expected a weight in (0, 1), got {rank_weight}")
    ranks = taxon_ids.shape[1]
    same = (taxon_ids[:, None, :] == taxon_ids[None, :, :]) & (taxon_ids[:, None, :] >= 0)
    # Shared depth: how many ranks from the coarsest down the two lineages agree on (ids name whole lineages, so
    # agreement at a rank implies it at every coarser one).
    depth = same.long().cumprod(dim=-1).sum(dim=-1)
    weights = torch.where(depth > 0, torch.tensor(rank_weight, dtype=torch.float32) ** (ranks - depth).float(), 0.0)
    weights.fill_diagonal_(1.0)
    return weights / weights.sum(dim=1, keepdim=True)


def _symmetric_infonce(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Mean of the cross-entropies over rows and over columns; ``targets`` None means the diagonal."""
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    targets = targets.to(logits.dtype)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t())) / 2


def contrastive_loss(
    embeds: Mapping[str, torch.Tensor],
    logit_scale: torch.Tensor,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    species_ids: torch.Tensor | None = None,
    same_species_positives: bool = False,
    taxon_ids: torch.Tensor | None = None,
    rank_weight: float = 0.0,
    gather: bool = False,
) -> torch.Tensor:
    r"""The BIOSCAN-CLIP loss: symmetric InfoNCE for each pair of modalities, averaged over the pairs.

    For a pair ``(a, b)`` the logits are ``logit_scale * embeds[a] @ embeds[b].T`` and the pair's loss is the mean
    of the cross-entropy over rows and over columns (record ``i`` of ``a`` matches record ``i`` of ``b``, or with
    ``same_species_positives`` every record of the same species, see [`contrastive_targets`]).

    Args:
        embeds (`Mapping[str, torch.Tensor]`):
            Unit-length embeddings of shape `(batch, dim)` per modality (``"image"``, ``"dna"``, ``"text"``), all
            of the same batch size, e.g. ``model.embed(**inputs)`` or the ``*_embeds`` of [`BioscanClipOutput`].
        logit_scale (`torch.Tensor` of shape `()`):
            The inverse temperature, already exponentiated (as ``BioscanClipOutput.logit_scale``).
        pairs (`Sequence[tuple[str, str]]`, *optional*):
            The pairs to average over; by default every combination of the modalities given, in the order
            image, dna, text.
        species_ids (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Species of each record, ``-1`` for unknown; needed with ``same_species_positives``.
        same_species_positives (`bool`, *optional*, defaults to `False`):
            Soft targets: the diagonal plus the same-species records, each row normalised to sum to 1.
        taxon_ids (`torch.LongTensor` of shape `(batch, ranks)`, *optional*): lineage ids of each record, coarsest
            rank first (see [`taxonomic_targets`]); needed with ``rank_weight``.
        rank_weight (`float`, *optional*, defaults to 0): above 0, soft targets by shared rank
            ([`taxonomic_targets`]) in place of the diagonal (and of ``same_species_positives``).
        gather (`bool`, *optional*, defaults to `False`):
            Take negatives from every process: with `torch.distributed` initialised and more than one process,
            the embeddings (and species ids) of all processes are gathered, this process's rows keeping their
            gradient (see [`gather_with_local_grad`]). A no-op with one process or no process group.

    Returns:
        `torch.Tensor` of shape `()`.

    With ``gather=True`` every process computes the same loss of the global batch, but its gradient reaches only
    the local rows (and a ``1 / world_size`` share of the temperature's). Under DDP, which averages gradients over
    processes, back-propagate ``loss * world_size``: the average then is exactly the gradient of the global loss,
    for every parameter.

    Example:

    ```python
    >>> import torch.nn.functional as F
    >>> embeds = {"image": F.normalize(torch.randn(4, 8), dim=-1), "dna": F.normalize(torch.randn(4, 8), dim=-1)}
    >>> loss = contrastive_loss(embeds, torch.tensor(10.0))
    >>> loss.shape
    torch.Size([])

    ```
    """
    if not isinstance(embeds, Mapping):
        raise TypeError(f"embeds: expected a mapping from modality name to embeddings, got {type(embeds).__name__}")
    unknown = sorted(set(embeds) - set(MODALITIES))
    if unknown:
        raise ValueError(f"embeds: expected modality names from {MODALITIES}, got {unknown}")
    if pairs is None:
        pairs = list(itertools.combinations([m for m in MODALITIES if m in embeds], 2))
    if not pairs:
        raise ValueError(f"expected at least two modalities (or one pair), got {sorted(embeds)}")
    for a, b in pairs:
        if a == b or a not in embeds or b not in embeds:
            raise ValueError(f"pairs: ({a!r}, {b!r}) is not a pair of two of the modalities given {sorted(embeds)}")
    used = sorted({name for pair in pairs for name in pair})
    sizes = {name: embeds[name].shape[0] for name in used}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every modality needs the same batch size, got {sizes}")
    if same_species_positives:
        if species_ids is None:
            raise ValueError("same_species_positives=True needs species_ids")
        if species_ids.shape != (next(iter(sizes.values())),):
            raise ValueError(
                f"species_ids: expected shape ({next(iter(sizes.values()))},), got {tuple(species_ids.shape)}"
            )
    batch = next(iter(sizes.values()))
    if rank_weight and (taxon_ids is None or taxon_ids.ndim != 2 or taxon_ids.shape[0] != batch):
        raise ValueError(
            f"rank_weight needs taxon_ids of shape ({batch}, ranks), got "
            f"{None if taxon_ids is None else tuple(taxon_ids.shape)}"
        )
    vectors = {name: gather_with_local_grad(embeds[name]) if gather else embeds[name] for name in used}
    if same_species_positives and gather:
        species_ids = gather_with_local_grad(species_ids)
    if rank_weight and gather:
        taxon_ids = gather_with_local_grad(taxon_ids)
    world_size = _world()[0] if gather else 1
    if world_size > 1:
        # The embeddings reach the loss through this process's rows only, but the temperature through every
        # logit: its gradient is here the whole batch's on each process. Scaled by 1/world_size (same value), it
        # too comes out exact after `loss * world_size` and DDP's average.
        logit_scale = logit_scale / world_size + (logit_scale * (1 - 1 / world_size)).detach()
    if rank_weight:
        targets = taxonomic_targets(taxon_ids, rank_weight).to(vectors[used[0]].device)
    elif same_species_positives:
        targets = contrastive_targets(species_ids, same_species_positives)
    else:
        targets = None
    # `logit_scale * a @ b.T` evaluates left to right; the forward pass uses the same expression, bit for bit.
    losses = [_symmetric_infonce(logit_scale * vectors[a] @ vectors[b].t(), targets) for a, b in pairs]
    return torch.stack(losses).mean()


def _accepts(model_class: type, argument: str) -> bool:
    return argument in inspect.signature(model_class.__init__).parameters


def _has_attention_layers(model: nn.Module) -> bool:
    # transformers' own test for "this model has attention" is a class named *Attention* (see
    # PreTrainedModel._can_set_attn_implementation); here it is applied to the modules actually built.
    return any("Attention" in type(module).__name__ for module in model.modules())


class BioscanClipPreTrainedModel(PreTrainedModel):
    config_class = BioscanClipConfig
    base_model_prefix = "bioscan_clip"
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []
    # The composite has no attention of its own: each tower checks the implementation asked for when it is built
    # (the transformers towers of the presets, BERT and ViT, support all three), and a tower without attention
    # (ResNet, ConvNeXt) is exempt (see `_build_tower`). SDPA and eager are tested on CPU, flex attention in a slow
    # test; flash attention needs a GPU and the flash-attn package and was not exercised here.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        # transformers 5 initialises every parameter that a checkpoint does not provide through this method, so
        # our own parameters (temperature, projections, DNA head) must be covered here, not only in __init__.
        super()._init_weights(module)
        if isinstance(module, BioscanClipModel):
            init.constant_(module.logit_scale, module.config.logit_scale_init_value)


class BioscanClipModel(BioscanClipPreTrainedModel):
    r"""The tri-modal BIOSCAN-CLIP model.

    Towers are built with ``AutoModel.from_config`` from ``config.{image,dna,text}_config`` for the enabled
    modalities only. Use [`BioscanClipModel.from_towers`] to start from pretrained towers saved on disk. An
    ``attn_implementation`` (``"eager"``, ``"sdpa"``, ...) given to ``from_pretrained`` or ``from_config`` reaches
    every tower that has attention.

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
    >>> out.dna_embeds.shape, out.logits_per_dna_text.shape, out.loss.ndim
    (torch.Size([4, 16]), torch.Size([4, 4]), 0)

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
        requested = tower_config._attn_implementation
        declares_attention = (
            model_class._supports_sdpa or model_class._supports_flash_attn or model_class._supports_flex_attn
        )
        if requested in (None, "eager") or declares_attention:
            # The tower validates the request itself (and raises if it cannot honour it).
            return model_class(tower_config, **kwargs)
        # transformers refuses an explicit "sdpa" for a model without attention (a CNN), although there is nothing
        # to dispatch: build it with the default so that the request concerns only the towers with attention.
        tower_config._attn_implementation = None
        tower = model_class(tower_config, **kwargs)
        if _has_attention_layers(tower):
            raise ValueError(f"{model_class.__name__} (a tower) does not support attn_implementation={requested!r}")
        return tower

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs: Any) -> None:
        """As ``PreTrainedModel.set_attn_implementation``; a tower without attention keeps its (eager) setting."""
        if isinstance(attn_implementation, str):
            requested, attn_implementation = attn_implementation, {"": attn_implementation}
            for name in self.modalities:
                tower = getattr(self, f"{name}_model")
                attn_implementation[f"{name}_config"] = requested if _has_attention_layers(tower) else "eager"
        super().set_attn_implementation(attn_implementation, **kwargs)

    # ---- features -----------------------------------------------------------------------------------------------
    def _require(self, modality: str) -> None:
        if modality not in self.modalities:
            raise BioscanInputError(f"this model has no {modality} tower; its modalities are {self.modalities}")

    def _encode_image(self, pixel_values: torch.Tensor, **tower_kwargs: Any) -> tuple[torch.Tensor, ModelOutput]:
        """Projected image embeddings and the image tower's output."""
        self._require("image")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise BioscanInputError(f"pixel_values: expected shape (batch, 3, H, W), got {tuple(pixel_values.shape)}")
        # As CLIP: the processor gives float32 pixels, a bf16/fp16 tower needs its own dtype.
        pixel_values = pixel_values.to(self.image_model.dtype)
        outputs = self.image_model(pixel_values=pixel_values, return_dict=True, **tower_kwargs)
        pooling = self.config.image_pooling
        if pooling == "pooler":
            pooled = outputs.pooler_output.flatten(1)
        elif pooling == "cls":
            pooled = outputs.last_hidden_state[:, 0]
        else:
            pooled = outputs.last_hidden_state.mean(dim=1)
        return self.image_projection(pooled), outputs

    def _encode_dna(
        self, dna_input_ids: torch.Tensor, dna_attention_mask: torch.Tensor | None, **tower_kwargs: Any
    ) -> tuple[torch.Tensor, ModelOutput]:
        """Projected DNA embeddings and the DNA tower's output; (batch, frames, seq) ids give the frame average."""
        self._require("dna")
        if dna_input_ids.ndim == 3:
            return self._encode_dna_frames(dna_input_ids, dna_attention_mask, **tower_kwargs)
        if dna_input_ids.ndim != 2:
            raise BioscanInputError(
                f"dna_input_ids: expected shape (batch, seq) or (batch, frames, seq), got {tuple(dna_input_ids.shape)}"
            )
        mask = dna_attention_mask if self.config.dna_use_attention_mask else None
        outputs = self.dna_model(input_ids=dna_input_ids, attention_mask=mask, return_dict=True, **tower_kwargs)
        hidden = outputs.last_hidden_state
        pooling = self.config.dna_pooling
        if pooling == "softmax_mean":
            per_position = self.dna_projection(self.dna_head_transform(hidden)).softmax(dim=-1)
            embeds = masked_mean(per_position, mask)
        elif pooling == "cls":
            embeds = self.dna_projection(hidden[:, 0])
        else:
            embeds = self.dna_projection(masked_mean(hidden, mask))
        return embeds, outputs

    def _encode_dna_frames(
        self, dna_input_ids: torch.Tensor, dna_attention_mask: torch.Tensor | None, **tower_kwargs: Any
    ) -> tuple[torch.Tensor, ModelOutput]:
        """The sum of the unit embeddings of each barcode's reading frames (batch, projection_dim), and the DNA
        tower's output over the ``batch * frames`` sequences (record-major: row ``b * frames + f``).

        The frames go through the tower as one batch. Each frame's embedding is made unit length first, so that
        every frame weighs the same; the frames are summed in order, frame 0 first. ``F.normalize`` of the sum is
        the direction of their mean, and the embedding of the package's key libraries. The sum, not the mean, is
        returned because dividing by the count would move the normalised vector by a float32 rounding step, and
        key libraries embedded before the model averaged frames itself hold exactly ``F.normalize(sum)``. One frame
        is the one-frame path itself (the projected embedding, not made unit length twice).
        """
        batch, frames, length = dna_input_ids.shape
        if dna_attention_mask is not None and dna_attention_mask.shape != dna_input_ids.shape:
            raise BioscanInputError(
                f"dna_attention_mask: expected the shape of dna_input_ids {tuple(dna_input_ids.shape)}, "
                f"got {tuple(dna_attention_mask.shape)}"
            )
        if frames == 1:  # the one-frame path itself, so that a frame axis of length 1 changes no bit
            mask = None if dna_attention_mask is None else dna_attention_mask[:, 0]
            return self._encode_dna(dna_input_ids[:, 0], mask, **tower_kwargs)
        flat_mask = None if dna_attention_mask is None else dna_attention_mask.reshape(batch * frames, length)
        embeds, outputs = self._encode_dna(dna_input_ids.reshape(batch * frames, length), flat_mask, **tower_kwargs)
        unit = F.normalize(embeds, dim=-1).view(batch, frames, -1)  # (batch, frames, projection_dim)
        total = unit[:, 0]
        for frame in range(1, frames):
            total = total + unit[:, frame]
        return total, outputs

    def _encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        **tower_kwargs: Any,
    ) -> tuple[torch.Tensor, ModelOutput]:
        """Projected taxonomy-text embeddings and the text tower's output."""
        self._require("text")
        if input_ids.ndim != 2:
            raise BioscanInputError(f"input_ids: expected shape (batch, seq), got {tuple(input_ids.shape)}")
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
            **tower_kwargs,
        )
        hidden = outputs.last_hidden_state
        pooling = self.config.text_pooling
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "mean_all":
            pooled = hidden.mean(dim=1)
        else:
            pooled = masked_mean(hidden, attention_mask)
        return self.text_projection(pooled), outputs

    def get_image_features(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Projected image embeddings (batch, projection_dim) from ``pixel_values`` (batch, 3, H, W).

        Pixels are cast to the image tower's dtype, so a bf16/fp16 model takes the processor's float32 pixels.
        """
        embeds, _ = self._encode_image(pixel_values)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_dna_features(
        self,
        dna_input_ids: torch.Tensor,
        dna_attention_mask: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Projected DNA embeddings (batch, projection_dim) from k-mer ids.

        Args:
            dna_input_ids (`torch.LongTensor` of shape `(batch, seq)` or `(batch, frames, seq)`):
                from the processor. With a frame axis (a model whose ``config.dna_frames`` is over 1, whose
                processor then gives every reading frame of each barcode), the embedding is the sum of the frames'
                unit embeddings (its norm over ``frames`` says how well they agree); with ``normalize=True`` it is
                their normalised mean, exactly what the model's key libraries hold.
            dna_attention_mask (`torch.LongTensor` of the shape of ``dna_input_ids``, *optional*).
            normalize (`bool`, *optional*, defaults to `False`): return unit vectors.
        """
        embeds, _ = self._encode_dna(dna_input_ids, dna_attention_mask)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Projected taxonomy-text embeddings (batch, projection_dim) from token ids (batch, seq)."""
        embeds, _ = self._encode_text(input_ids, attention_mask, token_type_ids)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def embed(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2-normalised embeddings of every modality present in ``inputs`` (processor output); DNA given in
        reading frames, `(batch, frames, seq)`, is embedded as their average (see [`get_dna_features`])."""
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

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        dna_input_ids: torch.Tensor | None = None,
        dna_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> BioscanClipOutput | tuple:
        r"""Embeds the modalities given and compares every pair.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, 3, H, W)`, *optional*): from the image processor.
            dna_input_ids, dna_attention_mask (`torch.LongTensor` of shape `(batch, seq)` or
                `(batch, frames, seq)`, *optional*): from the processor; with a frame axis, ``dna_embeds`` is the
                average of the frames (see [`get_dna_features`]) and ``dna_model_output`` holds the tower's output
                for the ``batch * frames`` sequences.
            input_ids, attention_mask, token_type_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
                taxonomy text from the text tokenizer.
            return_loss (`bool`, *optional*, defaults to `False`):
                Return [`contrastive_loss`] of the batch (at least two modalities needed; no gathering across
                processes, no same-species positives: call [`contrastive_loss`] on the embeddings for those).
            output_hidden_states (`bool`, *optional*):
                Passed to every tower; their outputs, with ``hidden_states``, are in ``*_model_output``.
            output_attentions (`bool`, *optional*):
                Passed to every tower with attention (the ``"eager"`` implementation returns them).
            return_dict (`bool`, *optional*, defaults to ``config.return_dict``):
                `False` returns a tuple of the non-None fields of [`BioscanClipOutput`], in their order.

        Returns:
            [`BioscanClipOutput`] or `tuple`.
        """
        if kwargs:
            raise TypeError(f"unexpected inputs for BioscanClipModel.forward: {sorted(kwargs)}")
        # As CLIP: the towers get the flags given (a tower without attention ignores `output_attentions`).
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        tower_kwargs = {name: value for name, value in flags.items() if value is not None}
        embeds, tower_outputs = {}, {}
        if pixel_values is not None:
            embeds["image"], tower_outputs["image"] = self._encode_image(pixel_values, **tower_kwargs)
        if dna_input_ids is not None:
            embeds["dna"], tower_outputs["dna"] = self._encode_dna(dna_input_ids, dna_attention_mask, **tower_kwargs)
        if input_ids is not None:
            embeds["text"], tower_outputs["text"] = self._encode_text(
                input_ids, attention_mask, token_type_ids, **tower_kwargs
            )
        if not embeds:
            raise BioscanInputError("no inputs given: expected pixel_values, dna_input_ids and/or input_ids")
        sizes = {name: value.shape[0] for name, value in embeds.items()}
        if len(set(sizes.values())) > 1:
            raise BioscanInputError(f"every modality needs the same batch size, got {sizes}")
        embeds = {name: F.normalize(value, dim=-1) for name, value in embeds.items()}
        logit_scale = self.logit_scale.exp()
        logits = {
            PAIR_LOGITS_FIELDS[(a, b)]: logit_scale * embeds[a] @ embeds[b].t()
            for (a, b) in PAIR_LOGITS_FIELDS
            if a in embeds and b in embeds
        }
        loss = None
        if return_loss:
            if not logits:
                raise BioscanInputError("return_loss=True needs at least two modalities in one call")
            loss = contrastive_loss(embeds, logit_scale)
        return BioscanClipOutput(
            loss=loss,
            **logits,
            image_embeds=embeds.get("image"),
            dna_embeds=embeds.get("dna"),
            text_embeds=embeds.get("text"),
            logit_scale=logit_scale,
            image_model_output=tower_outputs.get("image"),
            dna_model_output=tower_outputs.get("dna"),
            text_model_output=tower_outputs.get("text"),
        )

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamps the log temperature to [0, ``config.logit_scale_max``] (call after each optimiser step)."""
        self.logit_scale.clamp_(0.0, self.config.logit_scale_max)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            loaded = super().from_pretrained(*args, **kwargs)
        except pickle.UnpicklingError as error:  # torch.load(weights_only=True) met a pickled object: nothing ran
            reasons = [line for line in str(error).splitlines() if "GLOBAL" in line] or [str(error).splitlines()[0]]
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise BioscanInputError(
                f"{source}: refused the model weights: they hold pickled objects, not only tensors "
                f"({reasons[0].strip()[:160]}); load a model saved as model.safetensors"
            ) from None
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # safetensors memory-maps tensors at arbitrary byte offsets, and CPU kernels take other code paths for
        # unaligned memory, which changes results in the last bit. Fresh storage makes a reloaded model
        # reproduce the saved one's embeddings exactly.
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()
        return loaded

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``save_pretrained``; ``config.json`` also names the pipelines this model serves
        (``custom_pipelines``, see :mod:`pipeline_bioscanclip`), whose code is saved with the model's, as
        ``auto_map`` names the classes."""
        self.config.custom_pipelines = custom_pipelines(self.config.modalities)
        return super().save_pretrained(save_directory, *args, **kwargs)

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
