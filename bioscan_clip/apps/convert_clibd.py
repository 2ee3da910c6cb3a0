"""Converts the published CLIBD / BIOSCAN-CLIP checkpoints (raw ``.pth`` state dicts) into ``from_pretrained`` folders.

The checkpoints on the Hub (``bioscan-ml/clibd``,
``ckpt/bioscan_clip/ver_1_0/{bioscan_1m|bioscan_5m}/{image_dna_text|image_dna|image_text}_4gpu/best.pth``) are the
``state_dict`` of the original ``SimpleCLIP`` (``shared/reference/CLIBD_REFERENCE.md`` §1.5):

* ``image_encoder.base_image_encoder.*``: a timm ViT-B/16 whose fused ``attn.qkv`` may be wrapped by a LoRA module
  (``attn.qkv.qkv.*`` plus ``attn.qkv.linear_{a,b}_{q,v}.weight``; the final CLIBD models still carry these adapters
  because the original tests ``if lora_layer:`` and ``[]`` is falsy), its ``head`` being the 768-d projection;
* ``dna_encoder.base_dna_encoder.*``: BarcodeBERT as a ``BertForMaskedLM`` whose decoder was replaced by a
  ``Linear(768, 768)``; the embedding is ``logits.softmax(-1).mean(1)`` over all 133 positions, no attention mask;
* ``language_encoder.base_language_encoder.*`` (BERT-small) and ``language_encoder.proj``: the mean of every
  position's last hidden state (padding included), projected;
* ``logit_scale``.

LoRA adapters are merged into the base weights (``W += B A``, no alpha scaling, as in the original), the keys are
renamed to [`BioscanClipModel`]'s, tower sizes are read from the tensor shapes, and a checkpoint whose keys or
shapes do not match is refused with the full list of what is missing, unexpected or mis-shaped.

Command line::

    bioscan-clip convert-clibd best.pth --variant image_dna_text --out clibd-5m-image-dna-text \\
        --text-tokenizer path/to/prajjwal1-bert-small
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipImageProcessor,
    BioscanClipModel,
    BioscanClipProcessor,
    BioscanDnaTokenizer,
    BioscanInputError,
)
from modeling_bioscanclip.constants_bioscanclip import IMAGE_CROP, IMAGE_RESIZE

logger = logging.get_logger(__name__)

VARIANTS: dict[str, tuple[str, ...]] = {
    "image_dna_text": ("image", "dna", "text"),
    "image_dna": ("image", "dna"),
    "image_text": ("image", "text"),
}
BARCODEBERT_TOKENIZERS = ("original", "hub")

IMAGE_PREFIX = "image_encoder.base_image_encoder."
DNA_PREFIX = "dna_encoder.base_dna_encoder."
TEXT_PREFIX = "language_encoder.base_language_encoder."
TEXT_PROJECTION_PREFIX = "language_encoder.proj."
TOWER_PREFIXES = {"image": ("image_encoder.",), "dna": ("dna_encoder.",), "text": ("language_encoder.",)}

# Attribute names of older checkpoints, remapped by the original's `util.update_checkpoint_param_names`.
# `lora_barcode_bert` goes first: it must not be caught by a shorter pattern.
LEGACY_NAMES = (
    ("lora_barcode_bert", "base_dna_encoder"),
    ("lora_vit", "base_image_encoder"),
    ("lora_bert", "base_language_encoder"),
)

TIMM_VIT_LAYER_NORM_EPS = 1e-6  # timm's ViT LayerNorm; transformers' ViT defaults to 1e-12
BERT_LAYER_NORM_EPS = 1e-12  # BertConfig's default, used by BarcodeBERT and prajjwal1/bert-small
HEAD_DIM = 64  # ViT-B (768 = 12 x 64), BERT-base (12 x 64) and BERT-small (512 = 8 x 64)
HEAD_RULE = f"hidden size / {HEAD_DIM}"


class ClibdCheckpointError(BioscanInputError):
    """A checkpoint that cannot be converted: unsafe to load, or keys and shapes that do not match a CLIBD model.

    Attributes:
        missing (`list[str]`): keys the variant needs that the checkpoint lacks.
        unexpected (`list[str]`): keys of the checkpoint that no part of the variant uses.
        mismatched (`list[str]`): ``"key: expected (a, b), got (c, d)"`` for every mis-shaped tensor.
    """

    def __init__(
        self,
        message: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[str] = (),
    ) -> None:
        self.missing = sorted(set(missing))
        self.unexpected = sorted(set(unexpected))
        self.mismatched = sorted(set(mismatched))
        lines = [message]
        for title, items in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("mis-shaped tensors", self.mismatched),
        ):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines.extend(f"  {item}" for item in items)
        super().__init__("\n".join(lines))


@dataclass
class ClibdConversionReport:
    """What a conversion read, merged and dropped (also written to ``conversion_report.json``).

    Attributes:
        variant (`str`): ``image_dna_text``, ``image_dna`` or ``image_text``.
        modalities (`list[str]`): the towers converted.
        towers (`dict[str, dict[str, int]]`): the sizes read from the tensor shapes, per tower.
        lora_merged (`dict[str, list[int]]`): per tower, the layers whose LoRA adapters were merged.
        lora_rank (`dict[str, int]`): per tower, the adapters' rank (4 in the original).
        dropped_keys (`dict[str, str]`): checkpoint keys not carried over, each with the reason.
        legacy_renames (`int`): keys renamed from the older ``lora_vit``/``lora_barcode_bert``/``lora_bert`` names.
        stripped_module_prefix (`bool`): whether a DDP ``module.`` prefix was removed.
        logit_scale (`float`): the checkpoint's log inverse temperature.
        source (`str`, *optional*): the checkpoint file.
        source_sha256 (`str`, *optional*): its sha256.
    """

    variant: str
    modalities: list[str]
    towers: dict[str, dict[str, int]] = field(default_factory=dict)
    lora_merged: dict[str, list[int]] = field(default_factory=dict)
    lora_rank: dict[str, int] = field(default_factory=dict)
    dropped_keys: dict[str, str] = field(default_factory=dict)
    legacy_renames: int = 0
    stripped_module_prefix: bool = False
    logit_scale: float = float("nan")
    source: str | None = None
    source_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- safe loading ---------------------------------------------------------------------------------------------------
def sha256_of_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_clibd_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Loads a CLIBD ``.pth`` file as a flat ``{name: tensor}`` dict, without executing pickled code.

    Args:
        path (`str` or `os.PathLike`): the checkpoint.

    Returns:
        `dict[str, torch.Tensor]`. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        `ClibdCheckpointError`: the file is missing, holds non-tensor objects (a full unpickle would run their
        code: never done here), or is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ClibdCheckpointError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1][:300]
        raise ClibdCheckpointError(
            f"{path}: refused to load with torch.load(weights_only=True): the file holds objects other than "
            f"tensors and plain containers, or is not a torch checkpoint (torch: {reason}). Loading it fully "
            "would execute the code it contains, which this tool never does. If you trust its source, re-save "
            "its tensors alone in a sandbox (torch.save(dict(state_dict), 'plain.pth')) and convert that file."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ClibdCheckpointError(f"{path}: not a readable torch checkpoint ({error})") from error
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
                loaded = inner
                break
    if not isinstance(loaded, Mapping):
        raise ClibdCheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(loaded).__name__}"
        )
    not_tensors = [
        f"{key} ({type(value).__name__})" for key, value in loaded.items() if not isinstance(value, torch.Tensor)
    ]
    if not_tensors:
        raise ClibdCheckpointError(
            f"{path}: expected a state dict holding only tensors; {len(not_tensors)} entries are not tensors",
            unexpected=not_tensors,
        )
    return dict(loaded)


# ---- key layout -----------------------------------------------------------------------------------------------------
def normalize_clibd_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, bool]:
    """Strips a DDP ``module.`` prefix and renames the older attribute names, as the original loader does.

    Returns:
        ``(state_dict, number_of_legacy_renames, stripped_module_prefix)``.
    """
    keys = list(state_dict)
    strip = bool(keys) and all(key.startswith("module.") for key in keys)
    renamed: dict[str, torch.Tensor] = {}
    legacy = 0
    for key, value in state_dict.items():
        new_key = key[len("module.") :] if strip else key
        for old, new in LEGACY_NAMES:
            if f"{old}." in new_key:
                new_key = new_key.replace(f"{old}.", f"{new}.")
                legacy += 1
                break
        if new_key in renamed:
            raise ClibdCheckpointError(f"two checkpoint keys map to {new_key!r} after renaming (one of them {key!r})")
        renamed[new_key] = value
    return renamed, legacy, strip


def _layer_indices(keys: Iterable[str], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(match.group(1)) for key in keys if (match := pattern.match(key))})


def _heads(tower: str, hidden: int, overrides: Mapping[str, int] | None) -> int:
    if overrides and overrides.get(tower) is not None:
        heads = int(overrides[tower])
        if heads < 1 or hidden % heads:
            raise ClibdCheckpointError(f"{tower}: {heads} attention heads do not divide the hidden size {hidden}")
        return heads
    if hidden % HEAD_DIM:
        raise ClibdCheckpointError(
            f"{tower}: cannot choose the number of attention heads for hidden size {hidden} (rule: {HEAD_RULE}); "
            f"pass num_attention_heads={{'{tower}': N}} (--{tower}-num-heads N)"
        )
    return hidden // HEAD_DIM


class _Plan:
    """Expected source keys with their shapes, the target tensors, and what was dropped or merged."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.source = state_dict
        self.expected: dict[str, tuple[int, ...]] = {}
        self.optional_dropped: dict[str, str] = {}  # key -> reason, accepted when present
        self.missing: list[str] = []
        self.mismatched: list[str] = []

    def expect(self, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Registers a required key; returns its tensor when present with the right shape."""
        self.expected[key] = shape
        tensor = self.source.get(key)
        if tensor is None:
            self.missing.append(key)
            return None
        if tuple(tensor.shape) != tuple(shape):
            self.mismatched.append(f"{key}: expected {tuple(shape)}, got {tuple(tensor.shape)}")
            return None
        return tensor

    def anchor(self, key: str, ndim: int) -> torch.Tensor | None:
        """A tensor whose shape defines a tower's sizes: only its rank can be checked."""
        tensor = self.source.get(key)
        if tensor is None:
            self.missing.append(key)
        elif tensor.ndim != ndim:
            self.mismatched.append(f"{key}: expected a {ndim}-d tensor, got shape {tuple(tensor.shape)}")
            tensor = None
        if tensor is not None:
            self.expected[key] = tuple(tensor.shape)
        return tensor

    def drop_if_present(self, key: str, reason: str) -> None:
        self.optional_dropped[key] = reason

    def check(self) -> None:
        unexpected = [k for k in self.source if k not in self.expected and k not in self.optional_dropped]
        if self.missing or self.mismatched or unexpected:
            raise ClibdCheckpointError(
                "the checkpoint does not match the CLIBD layout of this variant",
                missing=self.missing,
                unexpected=unexpected,
                mismatched=self.mismatched,
            )


def _lora_delta(plan: _Plan, prefix: str, a_name: str, b_name: str, dim: int) -> tuple[torch.Tensor | None, int]:
    """``B @ A`` of one adapter (computed in float64), and its rank."""
    a = plan.anchor(f"{prefix}{a_name}.weight", 2)
    if a is None:
        return None, 0
    rank = a.shape[0]
    a = plan.expect(f"{prefix}{a_name}.weight", (rank, dim))
    b = plan.expect(f"{prefix}{b_name}.weight", (dim, rank))
    if a is None or b is None:
        return None, rank
    return b.double() @ a.double(), rank


def _add(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (base.double() + delta).to(base.dtype)


def _plan_image(plan: _Plan, report: ClibdConversionReport, heads: Mapping[str, int] | None) -> tuple[dict, dict]:
    """Reads the timm ViT; returns (tower tensors by role, ViT config)."""
    p = IMAGE_PREFIX
    patch = plan.anchor(f"{p}patch_embed.proj.weight", 4)
    pos = plan.anchor(f"{p}pos_embed", 3)
    head = plan.anchor(f"{p}head.weight", 2)
    layers = _layer_indices(plan.source, f"{p}blocks.")
    fc1 = plan.anchor(f"{p}blocks.0.mlp.fc1.weight", 2)
    if patch is None or pos is None or head is None or fc1 is None or not layers:
        raise ClibdCheckpointError(
            f"image tower: cannot read its sizes (transformer blocks under {p}blocks.*: {len(layers)})",
            missing=plan.missing,
            mismatched=plan.mismatched,
        )
    hidden, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    num_patches = pos.shape[1] - 1
    side = math.isqrt(max(num_patches, 0))
    if side * side != num_patches or patch.shape[3] != patch_size:
        raise ClibdCheckpointError(
            f"image tower: expected a square grid of square patches, got pos_embed {tuple(pos.shape)} and "
            f"patch_embed {tuple(patch.shape)}"
        )
    intermediate, projection_dim = fc1.shape[0], head.shape[0]
    num_layers = layers[-1] + 1
    tensors: dict[str, Any] = {
        "patch.weight": plan.expect(f"{p}patch_embed.proj.weight", (hidden, channels, patch_size, patch_size)),
        "patch.bias": plan.expect(f"{p}patch_embed.proj.bias", (hidden,)),
        "cls_token": plan.expect(f"{p}cls_token", (1, 1, hidden)),
        "pos_embed": plan.expect(f"{p}pos_embed", (1, num_patches + 1, hidden)),
        "norm.weight": plan.expect(f"{p}norm.weight", (hidden,)),
        "norm.bias": plan.expect(f"{p}norm.bias", (hidden,)),
        "head.weight": plan.expect(f"{p}head.weight", (projection_dim, hidden)),
        "head.bias": plan.expect(f"{p}head.bias", (projection_dim,)),
        "layers": [],
    }
    merged, ranks = [], set()
    for i in range(num_layers):
        b = f"{p}blocks.{i}."
        layer = {
            name: plan.expect(f"{b}{name}", shape)
            for name, shape in (
                ("norm1.weight", (hidden,)),
                ("norm1.bias", (hidden,)),
                ("attn.proj.weight", (hidden, hidden)),
                ("attn.proj.bias", (hidden,)),
                ("norm2.weight", (hidden,)),
                ("norm2.bias", (hidden,)),
                ("mlp.fc1.weight", (intermediate, hidden)),
                ("mlp.fc1.bias", (intermediate,)),
                ("mlp.fc2.weight", (hidden, intermediate)),
                ("mlp.fc2.bias", (hidden,)),
            )
        }
        if f"{b}attn.qkv.qkv.weight" in plan.source or f"{b}attn.qkv.linear_a_q.weight" in plan.source:
            # LoRA around the fused qkv: the adapters add B_q A_q x to the q third and B_v A_v x to the v third.
            qkv_w = plan.expect(f"{b}attn.qkv.qkv.weight", (3 * hidden, hidden))
            qkv_b = plan.expect(f"{b}attn.qkv.qkv.bias", (3 * hidden,))
            delta_q, rank_q = _lora_delta(plan, f"{b}attn.qkv.", "linear_a_q", "linear_b_q", hidden)
            delta_v, rank_v = _lora_delta(plan, f"{b}attn.qkv.", "linear_a_v", "linear_b_v", hidden)
            if qkv_w is not None and delta_q is not None and delta_v is not None:
                qkv_w = torch.cat(
                    [_add(qkv_w[:hidden], delta_q), qkv_w[hidden : 2 * hidden], _add(qkv_w[2 * hidden :], delta_v)]
                )
            merged.append(i)
            ranks.update({rank_q, rank_v} - {0})
        else:
            qkv_w = plan.expect(f"{b}attn.qkv.weight", (3 * hidden, hidden))
            qkv_b = plan.expect(f"{b}attn.qkv.bias", (3 * hidden,))
        layer["qkv.weight"], layer["qkv.bias"] = qkv_w, qkv_b
        tensors["layers"].append(layer)
    _record_lora(report, "image", merged, ranks)
    config = {
        "model_type": "vit",
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": _heads("image", hidden, heads),
        "intermediate_size": intermediate,
        "image_size": side * patch_size,
        "patch_size": patch_size,
        "num_channels": channels,
        # timm's ViT: LayerNorm eps 1e-6, biased fused qkv, exact (erf) GELU, no dropout.
        "layer_norm_eps": TIMM_VIT_LAYER_NORM_EPS,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    report.towers["image"] = {
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": config["num_attention_heads"],
        "intermediate_size": intermediate,
        "image_size": config["image_size"],
        "patch_size": patch_size,
        "projection_dim": projection_dim,
    }
    return tensors, config


def _record_lora(report: ClibdConversionReport, tower: str, merged: list[int], ranks: set[int]) -> None:
    if merged:
        report.lora_merged[tower] = merged
    if len(ranks) == 1:
        report.lora_rank[tower] = ranks.pop()
    elif ranks:
        report.lora_rank[tower] = max(ranks)


def _plan_bert(
    plan: _Plan, report: ClibdConversionReport, tower: str, prefix: str, heads: Mapping[str, int] | None
) -> tuple[dict[str, torch.Tensor | None], dict[str, Any]]:
    """Reads a BERT encoder under ``prefix``; returns (``BertModel`` state dict without pooler, BERT config)."""
    words = plan.anchor(f"{prefix}embeddings.word_embeddings.weight", 2)
    positions = plan.anchor(f"{prefix}embeddings.position_embeddings.weight", 2)
    token_types = plan.anchor(f"{prefix}embeddings.token_type_embeddings.weight", 2)
    intermediate_w = plan.anchor(f"{prefix}encoder.layer.0.intermediate.dense.weight", 2)
    layers = _layer_indices(plan.source, f"{prefix}encoder.layer.")
    if words is None or positions is None or token_types is None or intermediate_w is None or not layers:
        raise ClibdCheckpointError(
            f"{tower} tower: cannot read its sizes (BERT layers under {prefix}encoder.layer.*: {len(layers)})",
            missing=plan.missing,
            mismatched=plan.mismatched,
        )
    vocab, hidden = words.shape
    max_positions, type_vocab, intermediate = positions.shape[0], token_types.shape[0], intermediate_w.shape[0]
    num_layers = layers[-1] + 1
    out: dict[str, torch.Tensor | None] = {
        "embeddings.word_embeddings.weight": plan.expect(f"{prefix}embeddings.word_embeddings.weight", (vocab, hidden)),
        "embeddings.position_embeddings.weight": plan.expect(
            f"{prefix}embeddings.position_embeddings.weight", (max_positions, hidden)
        ),
        "embeddings.token_type_embeddings.weight": plan.expect(
            f"{prefix}embeddings.token_type_embeddings.weight", (type_vocab, hidden)
        ),
        "embeddings.LayerNorm.weight": plan.expect(f"{prefix}embeddings.LayerNorm.weight", (hidden,)),
        "embeddings.LayerNorm.bias": plan.expect(f"{prefix}embeddings.LayerNorm.bias", (hidden,)),
    }
    # Older transformers saved these buffers; they are rebuilt by the model.
    for buffer in ("position_ids", "token_type_ids"):
        plan.drop_if_present(f"{prefix}embeddings.{buffer}", "buffer rebuilt by transformers")
    merged, ranks = [], set()
    for i in range(num_layers):
        src, dst = f"{prefix}encoder.layer.{i}.", f"encoder.layer.{i}."
        for name, shape in (
            ("attention.self.key.weight", (hidden, hidden)),
            ("attention.self.key.bias", (hidden,)),
            ("attention.output.dense.weight", (hidden, hidden)),
            ("attention.output.dense.bias", (hidden,)),
            ("attention.output.LayerNorm.weight", (hidden,)),
            ("attention.output.LayerNorm.bias", (hidden,)),
            ("intermediate.dense.weight", (intermediate, hidden)),
            ("intermediate.dense.bias", (intermediate,)),
            ("output.dense.weight", (hidden, intermediate)),
            ("output.dense.bias", (hidden,)),
            ("output.LayerNorm.weight", (hidden,)),
            ("output.LayerNorm.bias", (hidden,)),
        ):
            out[dst + name] = plan.expect(src + name, shape)
        for projection in ("query", "value"):
            base = f"{src}attention.self.{projection}."
            if f"{base}w.weight" in plan.source or f"{base}w_a.weight" in plan.source:
                # LoRA wrapper `w(x) + w_b(w_a(x))`: the base Linear (with its bias) lives under `w`.
                weight = plan.expect(f"{base}w.weight", (hidden, hidden))
                bias = plan.expect(f"{base}w.bias", (hidden,))
                delta, rank = _lora_delta(plan, base, "w_a", "w_b", hidden)
                if weight is not None and delta is not None:
                    weight = _add(weight, delta)
                if i not in merged:
                    merged.append(i)
                ranks.update({rank} - {0})
            else:
                weight = plan.expect(f"{base}weight", (hidden, hidden))
                bias = plan.expect(f"{base}bias", (hidden,))
            out[f"{dst}attention.self.{projection}.weight"] = weight
            out[f"{dst}attention.self.{projection}.bias"] = bias
    _record_lora(report, tower, merged, ranks)
    config = {
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": _heads(tower, hidden, heads),
        "intermediate_size": intermediate,
        "max_position_embeddings": max_positions,
        "type_vocab_size": type_vocab,
        "hidden_act": "gelu",
        "layer_norm_eps": BERT_LAYER_NORM_EPS,
    }
    report.towers[tower] = {
        key: config[key]
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
    }
    return out, config


def _vit_target_names(model_keys: set[str]) -> dict[str, str]:
    """Our ViT tower's parameter names: transformers 5 uses ``layers.N.attention.q_proj``, 4.x ``encoder.layer.N``."""
    if "image_model.layers.0.attention.q_proj.weight" in model_keys:
        return {
            "layer": "image_model.layers.{i}.",
            "q": "attention.q_proj",
            "k": "attention.k_proj",
            "v": "attention.v_proj",
            "o": "attention.o_proj",
            "fc1": "mlp.fc1",
            "fc2": "mlp.fc2",
        }
    return {
        "layer": "image_model.encoder.layer.{i}.",
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "o": "attention.output.dense",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
    }


def _image_target(tensors: dict[str, Any], names: dict[str, str]) -> dict[str, torch.Tensor]:
    hidden = tensors["cls_token"].shape[-1]
    out = {
        "image_model.embeddings.patch_embeddings.projection.weight": tensors["patch.weight"],
        "image_model.embeddings.patch_embeddings.projection.bias": tensors["patch.bias"],
        "image_model.embeddings.cls_token": tensors["cls_token"],
        "image_model.embeddings.position_embeddings": tensors["pos_embed"],
        "image_model.layernorm.weight": tensors["norm.weight"],
        "image_model.layernorm.bias": tensors["norm.bias"],
        "image_projection.weight": tensors["head.weight"],
        "image_projection.bias": tensors["head.bias"],
    }
    for i, layer in enumerate(tensors["layers"]):
        t = names["layer"].format(i=i)
        # timm's fused qkv rows are [q; k; v], each head-major: the same order transformers' separate q/k/v use.
        for j, part in enumerate("qkv"):
            out[f"{t}{names[part]}.weight"] = layer["qkv.weight"][j * hidden : (j + 1) * hidden]
            out[f"{t}{names[part]}.bias"] = layer["qkv.bias"][j * hidden : (j + 1) * hidden]
        for source, target in (
            ("attn.proj", names["o"]),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
            ("mlp.fc1", names["fc1"]),
            ("mlp.fc2", names["fc2"]),
        ):
            out[f"{t}{target}.weight"] = layer[f"{source}.weight"]
            out[f"{t}{target}.bias"] = layer[f"{source}.bias"]
    return out


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The variant whose towers have keys in ``state_dict`` (after :func:`normalize_clibd_keys`)."""
    present = tuple(m for m, prefixes in TOWER_PREFIXES.items() if any(k.startswith(prefixes) for k in state_dict))
    for name, modalities in VARIANTS.items():
        if modalities == present:
            return name
    raise ClibdCheckpointError(f"cannot tell the variant: the checkpoint has keys for the towers {list(present)}")


def convert_clibd_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    variant: str = "image_dna_text",
    *,
    num_attention_heads: Mapping[str, int] | None = None,
) -> tuple[BioscanClipModel, ClibdConversionReport]:
    r"""Builds a [`BioscanClipModel`] holding the weights of a CLIBD state dict, configured to behave as the original.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the original ``SimpleCLIP`` state dict (see the module docstring).
        variant (`str`, *optional*, defaults to ``"image_dna_text"``):
            ``image_dna_text``, ``image_dna``, ``image_text``, or ``auto`` to read it from the keys.
        num_attention_heads (`Mapping[str, int]`, *optional*):
            Heads per tower (``{"image": 12, "dna": 12, "text": 8}``). Sizes are read from the tensor shapes, but
            the head count is not stored in them; by default it is hidden size / 64 (12 for 768, 8 for 512).

    Returns:
        `tuple[BioscanClipModel, ClibdConversionReport]`: the model in eval mode and what was merged and dropped.

    Raises:
        `ClibdCheckpointError`: keys missing, unexpected or mis-shaped for the variant (all listed at once), an
        unknown variant, or towers that disagree on the embedding size.
    """
    if variant != "auto" and variant not in VARIANTS:
        raise ClibdCheckpointError(f"variant: expected one of {[*VARIANTS, 'auto']}, got {variant!r}")
    state_dict, legacy, stripped = normalize_clibd_keys(state_dict)
    if variant == "auto":
        variant = detect_variant(state_dict)
    modalities = VARIANTS[variant]
    report = ClibdConversionReport(
        variant=variant, modalities=list(modalities), legacy_renames=legacy, stripped_module_prefix=stripped
    )
    plan = _Plan(state_dict)
    logit_scale = plan.expect("logit_scale", ())
    configs: dict[str, dict[str, Any]] = {}
    projection_dims: dict[str, int] = {}
    image_tensors: dict[str, Any] | None = None
    target: dict[str, torch.Tensor | None] = {}
    if "image" in modalities:
        image_tensors, configs["image"] = _plan_image(plan, report, num_attention_heads)
        projection_dims["image"] = report.towers["image"]["projection_dim"]
    if "dna" in modalities:
        bert, configs["dna"] = _plan_bert(plan, report, "dna", f"{DNA_PREFIX}bert.", num_attention_heads)
        target.update({f"dna_model.{key}": value for key, value in bert.items()})
        hidden, vocab = configs["dna"]["hidden_size"], configs["dna"]["vocab_size"]
        p = f"{DNA_PREFIX}cls.predictions."
        decoder = plan.anchor(f"{p}decoder.weight", 2)
        projection_dims["dna"] = decoder.shape[0] if decoder is not None else -1
        for source, dest, shape in (
            ("transform.dense.weight", "dna_head_transform.0.weight", (hidden, hidden)),
            ("transform.dense.bias", "dna_head_transform.0.bias", (hidden,)),
            ("transform.LayerNorm.weight", "dna_head_transform.2.weight", (hidden,)),
            ("transform.LayerNorm.bias", "dna_head_transform.2.bias", (hidden,)),
            ("decoder.weight", "dna_projection.weight", (projection_dims["dna"], hidden)),
            ("decoder.bias", "dna_projection.bias", (projection_dims["dna"],)),
        ):
            target[dest] = plan.expect(p + source, shape)
        plan.expect(f"{p}bias", (vocab,))
        report.dropped_keys[f"{p}bias"] = (
            "orphan MLM output bias over the k-mer vocabulary; the original replaced the decoder by a "
            "Linear(768, 768) with its own bias, so this tensor is unused"
        )
    if "text" in modalities:
        bert, configs["text"] = _plan_bert(plan, report, "text", TEXT_PREFIX, num_attention_heads)
        target.update({f"text_model.{key}": value for key, value in bert.items()})
        hidden = configs["text"]["hidden_size"]
        projection = plan.anchor(f"{TEXT_PROJECTION_PREFIX}weight", 2)
        projection_dims["text"] = projection.shape[0] if projection is not None else -1
        target["text_projection.weight"] = plan.expect(
            f"{TEXT_PROJECTION_PREFIX}weight", (projection_dims["text"], hidden)
        )
        target["text_projection.bias"] = plan.expect(f"{TEXT_PROJECTION_PREFIX}bias", (projection_dims["text"],))
        for name, shape in (("pooler.dense.weight", (hidden, hidden)), ("pooler.dense.bias", (hidden,))):
            plan.expect(TEXT_PREFIX + name, shape)
            report.dropped_keys[TEXT_PREFIX + name] = "BERT pooler, unused by the original (it mean-pools)"
    plan.check()
    for key in plan.optional_dropped:
        if key in state_dict:
            report.dropped_keys[key] = plan.optional_dropped[key]
    if len(set(projection_dims.values())) != 1:
        raise ClibdCheckpointError(f"the towers disagree on the embedding size: {projection_dims}")

    value = float(logit_scale)
    report.logit_scale = value
    config = BioscanClipConfig(
        modalities=list(modalities),
        image_config=configs.get("image"),
        dna_config=configs.get("dna"),
        text_config=configs.get("text"),
        projection_dim=next(iter(projection_dims.values())),
        projection_bias=True,
        image_pooling="cls",
        # The original DNA head: MLM transform + Linear, softmax over the outputs, mean over all 133 positions.
        dna_pooling="softmax_mean",
        dna_use_attention_mask=False,
        # The original text pooling: the mean over all 20 positions, padding included.
        text_pooling="mean_all",
        logit_scale_init_value=value,
        # The original never clamps the temperature; keep a trained value above ln(100) reachable.
        logit_scale_max=max(math.log(100.0), value),
    )
    model = BioscanClipModel(config).eval()
    if image_tensors is not None:
        target.update(_image_target(image_tensors, _vit_target_names(set(model.state_dict()))))
    target["logit_scale"] = logit_scale
    _load_exactly(model, target)
    return model, report


def _load_exactly(model: BioscanClipModel, target: Mapping[str, torch.Tensor | None]) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(target))
    unexpected = sorted(set(target) - set(own))
    mismatched = [
        f"{key}: model {tuple(own[key].shape)}, converted {tuple(value.shape)}"
        for key, value in target.items()
        if key in own and value is not None and tuple(value.shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or mismatched:
        # The checkpoint passed validation, so this is the converter and the installed transformers disagreeing.
        raise ClibdCheckpointError(
            "internal error: the converted names do not match BioscanClipModel's (transformers layout changed?)",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    with torch.no_grad():
        model.load_state_dict({key: value.to(own[key].dtype) for key, value in target.items()}, strict=True)


# ---- writing the folder ---------------------------------------------------------------------------------------------
def _load_text_tokenizer(text_tokenizer: Any, report: ClibdConversionReport) -> Any:
    if text_tokenizer is None:
        return None
    if isinstance(text_tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        directory = Path(text_tokenizer)
        if not directory.is_dir():
            raise BioscanInputError(f"--text-tokenizer: expected a local tokenizer folder, got {directory}")
        text_tokenizer = AutoTokenizer.from_pretrained(directory)
    if "text" in report.towers:
        rows = report.towers["text"]["vocab_size"]
        if len(text_tokenizer) != rows:
            raise BioscanInputError(
                f"text tokenizer: {len(text_tokenizer)} tokens, but the checkpoint's text word embeddings have "
                f"{rows} rows; the original uses prajjwal1/bert-small's tokenizer (30522 tokens)"
            )
    return text_tokenizer


def _image_processor(image_size: int) -> BioscanClipImageProcessor:
    # The original evaluation transform (torchvision on float tensors): shorter side to 256, centre crop 224,
    # pixels left in [0, 1].
    resize = IMAGE_RESIZE if image_size == IMAGE_CROP else round(image_size * IMAGE_RESIZE / IMAGE_CROP)
    return BioscanClipImageProcessor(
        resize_shortest_edge=resize, crop_size=image_size, do_normalize=False, reference_mode=True
    )


CARD_BEHAVIOUR = {
    "image": (
        "- Image: timm ViT-B/16 as a transformers ViT (LayerNorm eps 1e-6, biased qkv, exact GELU), CLS token of the\n"
        "  final norm, linear head. Pixels are **not normalised** (the original feeds [0, 1]): shorter side resized to\n"
        "  256 on float pixels, centre crop 224 as torchvision rounds it\n"
        "  (`do_normalize=False`, `reference_mode=True`)."
    ),
    "dna": (
        "- DNA: the original k-mer ids (5-mers, stride 5, 660 nt padded with `N`, id 0 prepended, 133 ids;\n"
        "  `BioscanDnaTokenizer(reference_mode=True)`), no attention mask; MLM transform + linear head, softmax over\n"
        '  the outputs, mean over all 133 positions (`dna_pooling="softmax_mean"`, `dna_use_attention_mask=False`).'
    ),
    "text": (
        '- Text: BERT-small over `"order family genus species"` padded to 20 tokens, mean over all 20 positions\n'
        '  (`text_pooling="mean_all"`), linear head.'
    ),
}


def _model_card(report: ClibdConversionReport, source_name: str, has_processor: bool) -> str:
    towers = "\n".join(f"| {name} | {json.dumps(sizes)} |" for name, sizes in report.towers.items())
    lora = (
        ", ".join(
            f"{tower}: layers {layers} (rank {report.lora_rank.get(tower)})"
            for tower, layers in report.lora_merged.items()
        )
        or "none"
    )
    dropped = "\n".join(f"  - `{key}`: {reason}" for key, reason in sorted(report.dropped_keys.items())) or "  - none"
    behaviour = "\n".join(CARD_BEHAVIOUR[modality] for modality in report.modalities)
    if has_processor:
        processor_note = (
            "The folder holds the full processor: `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`."
        )
    elif "text" not in report.modalities:
        processor_note = (
            "This variant has no text tower. The image processor is saved at the root "
            "(`AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)`) and the DNA tokenizer in "
            '`dna_tokenizer/` (`AutoTokenizer.from_pretrained(folder, subfolder="dna_tokenizer", '
            "trust_remote_code=True)`); `BioscanClipProcessor` also wants a text tokenizer, which this model ignores."
        )
    else:
        processor_note = (
            "**The text tokenizer was not supplied, so the folder has no complete processor.** The original uses "
            "the tokenizer of `prajjwal1/bert-small` (30522 tokens). Build the processor once and save it here:\n\n"
            "```python\n"
            "from transformers import AutoImageProcessor, AutoTokenizer\n"
            "from modeling_bioscanclip import BioscanClipProcessor\n\n"
            "processor = BioscanClipProcessor(\n"
            "    image_processor=AutoImageProcessor.from_pretrained(folder, trust_remote_code=True),\n"
            '    dna_tokenizer=AutoTokenizer.from_pretrained(folder, subfolder="dna_tokenizer", trust_remote_code=True),\n'
            '    tokenizer=AutoTokenizer.from_pretrained("prajjwal1/bert-small"),\n'
            ")\n"
            "processor.save_pretrained(folder)\n"
            "```\n\n"
            "or re-run the conversion with `--text-tokenizer DIR` (a local copy of that tokenizer)."
        )
    projection_dim = next(iter(report.towers.values())).get("projection_dim", "")
    load_processor = "" if has_processor else "  # once the processor is added (see above)"
    return f"""---
library_name: transformers
tags:
- bioscan-clip
- clibd
- biodiversity
- dna-barcoding
---

# CLIBD ({report.variant}), converted

Weights of the published CLIBD / BIOSCAN-CLIP checkpoint converted to the `from_pretrained` format of
bioscan-clip (`BioscanClipModel`, safetensors), configured to reproduce the original's embeddings.

## Source

| | |
|---|---|
| checkpoint | `{source_name}` |
| sha256 | `{report.source_sha256 or "n/a"}` |
| variant | `{report.variant}` (towers: {", ".join(report.modalities)}) |
| logit_scale | {report.logit_scale:.6f} (temperature 1/{math.exp(report.logit_scale):.3f}) |

Published by the CLIBD authors on the Hub in `bioscan-ml/clibd`; see that repository for the licence and the
paper (Gong et al., *CLIBD: Bridging Vision and Genomics for Biodiversity Monitoring at Scale*, ICLR 2025).

## What the conversion did

| tower | sizes read from the checkpoint |
|---|---|
{towers}

- LoRA adapters merged into the base weights (`W += B A`, no scaling, as in the original): {lora}.
- Keys renamed from older names: {report.legacy_renames}; DDP `module.` prefix stripped: {report.stripped_module_prefix}.
- Keys not carried over:
{dropped}

## Behaviour kept from the original

{behaviour}
- `forward` returns L2-normalised {projection_dim}-d embeddings; `get_*_features(..., normalize=False)` the raw
  projections.

## Processor

{processor_note}

## Use

```python
from transformers import AutoModel, AutoProcessor

repo = "<owner>/<this-repo>"
revision = "<40-character commit sha>"  # pin it: it fixes both the weights and the remote code
model = AutoModel.from_pretrained(repo, revision=revision, trust_remote_code=True, use_safetensors=True).eval()
processor = AutoProcessor.from_pretrained(repo, revision=revision, trust_remote_code=True){load_processor}
inputs = processor(images=["specimen.jpg"], dna=["AACATTATATTTTATTTTTGG..."],
                   text=["Diptera Sciaridae Bradysia Bradysia impatiens"])
out = model(**inputs)  # out.image_embeds, out.dna_embeds, out.text_embeds
```
"""


def convert_clibd_checkpoint(
    path: str | os.PathLike,
    variant: str,
    out_dir: str | os.PathLike,
    barcodebert_tokenizer: str = "original",
    *,
    text_tokenizer: Any = None,
    num_attention_heads: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> ClibdConversionReport:
    r"""Converts one CLIBD ``.pth`` file into a ``save_pretrained`` folder (safetensors, processor, model card).

    Args:
        path (`str` or `os.PathLike`): the checkpoint, e.g. ``.../bioscan_5m/image_dna_text_4gpu/best.pth``.
        variant (`str`): ``image_dna_text``, ``image_dna``, ``image_text`` or ``auto``.
        out_dir (`str` or `os.PathLike`): the folder to write (must be empty unless ``overwrite``).
        barcodebert_tokenizer (`str`, *optional*, defaults to ``"original"``):
            ``original``: the k-mer tokenizer the published ``ver_1_0`` checkpoints were trained with. ``hub``: the
            newer ``bioscan-ml/BarcodeBERT`` tokenizer of later clibd ablations; not bundled (it is remote code that
            must be downloaded), so it is refused with instructions.
        text_tokenizer (`str`, `os.PathLike` or tokenizer, *optional*):
            A local copy of ``prajjwal1/bert-small``'s tokenizer (a folder, or a loaded tokenizer). Its size must
            equal the checkpoint's text vocabulary. Without it, the image processor and DNA tokenizer are saved but
            not the full processor, and the model card says how to add it.
        num_attention_heads (`Mapping[str, int]`, *optional*): see [`convert_clibd_state_dict`].
        overwrite (`bool`, *optional*, defaults to `False`): write into a non-empty ``out_dir``.

    Returns:
        [`ClibdConversionReport`], also written to ``out_dir/conversion_report.json``.
    """
    if barcodebert_tokenizer not in BARCODEBERT_TOKENIZERS:
        raise BioscanInputError(
            f"barcodebert_tokenizer: expected one of {BARCODEBERT_TOKENIZERS}, got {barcodebert_tokenizer!r}"
        )
    if barcodebert_tokenizer == "hub":
        raise BioscanInputError(
            "barcodebert_tokenizer='hub' needs a local copy of the newer bioscan-ml/BarcodeBERT tokenizer "
            "(remote code, max_length=133), which this converter does not bundle. The published ver_1_0 "
            "checkpoints were trained with the original k-mer tokenizer: use 'original' (the default)."
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise BioscanInputError(f"{out_dir} is not empty; choose another folder or pass overwrite=True (--overwrite)")
    state_dict = load_clibd_checkpoint(path)
    model, report = convert_clibd_state_dict(state_dict, variant, num_attention_heads=num_attention_heads)
    report.source = os.fspath(path)
    report.source_sha256 = sha256_of_file(path)
    tokenizer = _load_text_tokenizer(text_tokenizer, report)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    image_processor = _image_processor(report.towers["image"]["image_size"])
    dna_tokenizer = BioscanDnaTokenizer(reference_mode=True)
    if tokenizer is not None:
        BioscanClipProcessor(
            image_processor=image_processor, dna_tokenizer=dna_tokenizer, tokenizer=tokenizer
        ).save_pretrained(out_dir)
    else:
        image_processor.save_pretrained(out_dir)
        dna_tokenizer.save_pretrained(out_dir / "dna_tokenizer")
        # Remote-code loading looks for a subfolder's code files at the repository root.
        for code_file in (out_dir / "dna_tokenizer").glob("*.py"):
            if not (out_dir / code_file.name).exists():
                shutil.copyfile(code_file, out_dir / code_file.name)
        if "text" in report.modalities:
            logger.warning(
                "no --text-tokenizer given: the folder has no complete processor; the model card says how to add "
                "prajjwal1/bert-small's tokenizer"
            )
    parts = Path(path).parts
    # Name the file by its place in bioscan-ml/clibd when it has one; local folders are nobody's business.
    source_name = "/".join(parts[len(parts) - 1 - parts[::-1].index("ckpt") :] if "ckpt" in parts else parts[-3:])
    source_name = source_name.lstrip("/")
    (out_dir / "README.md").write_text(_model_card(report, source_name, tokenizer is not None), encoding="utf-8")
    (out_dir / "conversion_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
