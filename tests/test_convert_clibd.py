"""convert-clibd: key mapping, LoRA merge and pooling checked against independent computations of the original towers.

No real CLIBD weights are needed: random state dicts carry exactly the original's key names and shapes. The DNA and
text references *are* transformers' ``BertForMaskedLM`` / ``BertModel`` (as in the original), loaded strictly with
the original names; the image reference is timm's ViT forward written out in plain torch.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BertConfig, BertForMaskedLM, BertModel, BertTokenizer

from bioscan_clip.apps.cli import main as cli_main
from bioscan_clip.apps.convert_clibd import (
    ClibdCheckpointError,
    convert_clibd_checkpoint,
    convert_clibd_state_dict,
    load_clibd_checkpoint,
    sha256_of_file,
)
from modeling_bioscanclip import BioscanClipModel, BioscanDnaTokenizer

TOLERANCE = 1e-5  # max abs difference allowed in float32
IMG, DNA, TXT = "image_encoder.base_image_encoder.", "dna_encoder.base_dna_encoder.", "language_encoder."


@dataclass(frozen=True)
class Dims:
    image_hidden: int
    image_layers: int
    image_heads: int
    image_intermediate: int
    patch: int
    image_size: int
    dna_hidden: int
    dna_layers: int
    dna_heads: int
    dna_intermediate: int
    dna_positions: int
    text_vocab: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    text_positions: int
    embed: int
    dna_vocab: int = 1027

    @property
    def heads(self) -> dict[str, int]:
        return {"image": self.image_heads, "dna": self.dna_heads, "text": self.text_heads}


SMALL = Dims(32, 2, 2, 64, 8, 32, 32, 2, 2, 64, 140, 64, 24, 2, 3, 48, 32, 16)
FULL = Dims(768, 12, 12, 3072, 16, 224, 768, 12, 12, 3072, 512, 30522, 512, 4, 8, 2048, 512, 768)
VARIANT_TOWERS = {
    "image_dna_text": ("image", "dna", "text"),
    "image_dna": ("image", "dna"),
    "image_text": ("image", "text"),
}


# ---- a random checkpoint with the original's names and shapes -----------------------------------------------------
def _bert_layers(sd: dict, prefix: str, hidden: int, inter: int, layers: int, lora_rank: int, rand) -> None:
    for i in range(layers):
        p = f"{prefix}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            base = f"{p}attention.self.{name}."
            if lora_rank and name != "key":
                sd[f"{base}w.weight"], sd[f"{base}w.bias"] = rand(hidden, hidden), rand(hidden)
                sd[f"{base}w_a.weight"] = rand(lora_rank, hidden, std=0.1)
                sd[f"{base}w_b.weight"] = rand(hidden, lora_rank, std=0.1)
            else:
                sd[f"{base}weight"], sd[f"{base}bias"] = rand(hidden, hidden), rand(hidden)
        sd[f"{p}attention.output.dense.weight"], sd[f"{p}attention.output.dense.bias"] = (
            rand(hidden, hidden),
            rand(hidden),
        )
        sd[f"{p}attention.output.LayerNorm.weight"], sd[f"{p}attention.output.LayerNorm.bias"] = (
            rand(hidden, ln=True),
            rand(hidden),
        )
        sd[f"{p}intermediate.dense.weight"], sd[f"{p}intermediate.dense.bias"] = rand(inter, hidden), rand(inter)
        sd[f"{p}output.dense.weight"], sd[f"{p}output.dense.bias"] = rand(hidden, inter), rand(hidden)
        sd[f"{p}output.LayerNorm.weight"], sd[f"{p}output.LayerNorm.bias"] = rand(hidden, ln=True), rand(hidden)


def _bert_embeddings(sd: dict, prefix: str, vocab: int, hidden: int, positions: int, rand) -> None:
    p = f"{prefix}embeddings."
    sd[f"{p}word_embeddings.weight"] = rand(vocab, hidden, std=0.1)
    sd[f"{p}position_embeddings.weight"] = rand(positions, hidden, std=0.1)
    sd[f"{p}token_type_embeddings.weight"] = rand(2, hidden, std=0.1)
    sd[f"{p}LayerNorm.weight"], sd[f"{p}LayerNorm.bias"] = rand(hidden, ln=True), rand(hidden)


def make_clibd_state_dict(
    variant: str, d: Dims, image_lora: int = 4, bert_lora: int = 0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random ``SimpleCLIP`` state dict. ``image_lora`` is on by default: the final CLIBD models carry it."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.02, ln: bool = False) -> torch.Tensor:
        values = torch.randn(*shape, generator=generator) * (0.1 if ln else std)
        return values + 1.0 if ln else values

    towers = VARIANT_TOWERS[variant]
    sd: dict[str, torch.Tensor] = {}
    h, n = d.image_hidden, (d.image_size // d.patch) ** 2
    sd[f"{IMG}cls_token"] = rand(1, 1, h)
    sd[f"{IMG}pos_embed"] = rand(1, n + 1, h, std=0.1)
    sd[f"{IMG}patch_embed.proj.weight"] = rand(h, 3, d.patch, d.patch, std=0.05)
    sd[f"{IMG}patch_embed.proj.bias"] = rand(h)
    for i in range(d.image_layers):
        p = f"{IMG}blocks.{i}."
        sd[f"{p}norm1.weight"], sd[f"{p}norm1.bias"] = rand(h, ln=True), rand(h)
        if image_lora:
            sd[f"{p}attn.qkv.qkv.weight"], sd[f"{p}attn.qkv.qkv.bias"] = rand(3 * h, h), rand(3 * h)
            for part in ("q", "v"):
                sd[f"{p}attn.qkv.linear_a_{part}.weight"] = rand(image_lora, h, std=0.1)
                sd[f"{p}attn.qkv.linear_b_{part}.weight"] = rand(h, image_lora, std=0.1)
        else:
            sd[f"{p}attn.qkv.weight"], sd[f"{p}attn.qkv.bias"] = rand(3 * h, h), rand(3 * h)
        sd[f"{p}attn.proj.weight"], sd[f"{p}attn.proj.bias"] = rand(h, h), rand(h)
        sd[f"{p}norm2.weight"], sd[f"{p}norm2.bias"] = rand(h, ln=True), rand(h)
        sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"] = rand(d.image_intermediate, h), rand(d.image_intermediate)
        sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"] = rand(h, d.image_intermediate), rand(h)
    sd[f"{IMG}norm.weight"], sd[f"{IMG}norm.bias"] = rand(h, ln=True), rand(h)
    sd[f"{IMG}head.weight"], sd[f"{IMG}head.bias"] = rand(d.embed, h, std=0.05), rand(d.embed)
    if "dna" in towers:
        h = d.dna_hidden
        _bert_embeddings(sd, f"{DNA}bert.", d.dna_vocab, h, d.dna_positions, rand)
        _bert_layers(sd, f"{DNA}bert.", h, d.dna_intermediate, d.dna_layers, bert_lora, rand)
        p = f"{DNA}cls.predictions."
        sd[f"{p}bias"] = rand(d.dna_vocab)  # the orphan MLM bias
        sd[f"{p}transform.dense.weight"], sd[f"{p}transform.dense.bias"] = rand(h, h, std=0.05), rand(h)
        sd[f"{p}transform.LayerNorm.weight"], sd[f"{p}transform.LayerNorm.bias"] = rand(h, ln=True), rand(h)
        # Large enough that the per-position softmax is far from uniform.
        sd[f"{p}decoder.weight"], sd[f"{p}decoder.bias"] = rand(d.embed, h, std=0.5), rand(d.embed, std=0.5)
    if "text" in towers:
        h = d.text_hidden
        prefix = f"{TXT}base_language_encoder."
        _bert_embeddings(sd, prefix, d.text_vocab, h, d.text_positions, rand)
        _bert_layers(sd, prefix, h, d.text_intermediate, d.text_layers, bert_lora, rand)
        sd[f"{prefix}pooler.dense.weight"], sd[f"{prefix}pooler.dense.bias"] = rand(h, h), rand(h)
        sd[f"{TXT}proj.weight"], sd[f"{TXT}proj.bias"] = rand(d.embed, h, std=0.05), rand(d.embed)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07) + 0.5)
    return sd


# ---- independent references ---------------------------------------------------------------------------------------
def reference_image(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """timm ``VisionTransformer.forward`` (+ the original's LoRA around the fused qkv), written from its equations."""
    g = lambda name: sd[IMG + name]  # noqa: E731
    dim = g("cls_token").shape[-1]
    patch = g("patch_embed.proj.weight").shape[-1]
    x = F.conv2d(pixels, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=patch)
    x = x.flatten(2).transpose(1, 2)  # (batch, patches, dim)
    x = torch.cat([g("cls_token").expand(x.shape[0], -1, -1), x], dim=1) + g("pos_embed")
    blocks = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(IMG + "blocks."))
    for i in range(blocks):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (dim,), g(b + "norm1.weight"), g(b + "norm1.bias"), eps=1e-6)
        if IMG + b + "attn.qkv.qkv.weight" in sd:
            qkv = F.linear(y, g(b + "attn.qkv.qkv.weight"), g(b + "attn.qkv.qkv.bias"))
            new_q = F.linear(F.linear(y, g(b + "attn.qkv.linear_a_q.weight")), g(b + "attn.qkv.linear_b_q.weight"))
            new_v = F.linear(F.linear(y, g(b + "attn.qkv.linear_a_v.weight")), g(b + "attn.qkv.linear_b_v.weight"))
            qkv = torch.cat([qkv[..., :dim] + new_q, qkv[..., dim : 2 * dim], qkv[..., 2 * dim :] + new_v], dim=-1)
        else:
            qkv = F.linear(y, g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"))
        batch, tokens, _ = qkv.shape
        q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attention = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(y, g(b + "attn.proj.weight"), g(b + "attn.proj.bias"))
        y = F.layer_norm(x, (dim,), g(b + "norm2.weight"), g(b + "norm2.bias"), eps=1e-6)
        y = F.linear(
            F.gelu(F.linear(y, g(b + "mlp.fc1.weight"), g(b + "mlp.fc1.bias"))),
            g(b + "mlp.fc2.weight"),
            g(b + "mlp.fc2.bias"),
        )
        x = x + y
    x = F.layer_norm(x, (dim,), g("norm.weight"), g("norm.bias"), eps=1e-6)
    return F.linear(x[:, 0], g("head.weight"), g("head.bias"))


class OriginalLoRALayer(nn.Module):
    """The original's ``_LoRALayer``: ``w(x) + w_b(w_a(x))``, so that its state-dict names load as they are."""

    def __init__(self, w: nn.Linear, rank: int) -> None:
        super().__init__()
        self.w = w
        self.w_a = nn.Linear(w.in_features, rank, bias=False)
        self.w_b = nn.Linear(rank, w.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w(x) + self.w_b(self.w_a(x))


def _bert_config(sd: dict, prefix: str, heads: int) -> BertConfig:
    vocab, hidden = sd[f"{prefix}embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(k[len(prefix) :].split(".")[2]) for k in sd if k.startswith(f"{prefix}encoder.layer."))
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=sd[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sd[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
    )


def _wrap_lora(encoder_layers, sd: dict, prefix: str) -> None:
    for i, layer in enumerate(encoder_layers):
        key = f"{prefix}encoder.layer.{i}.attention.self.query.w_a.weight"
        if key in sd:
            rank = sd[key].shape[0]
            layer.attention.self.query = OriginalLoRALayer(layer.attention.self.query, rank)
            layer.attention.self.value = OriginalLoRALayer(layer.attention.self.value, rank)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def reference_dna(sd: dict, input_ids: torch.Tensor, heads: int) -> torch.Tensor:
    """The original DNA tower: ``BertForMaskedLM`` with a Linear(768, 768) decoder, ``logits.softmax(-1).mean(1)``."""
    model = BertForMaskedLM(_bert_config(sd, f"{DNA}bert.", heads))
    hidden = model.config.hidden_size
    model.cls.predictions.decoder = nn.Linear(hidden, sd[f"{DNA}cls.predictions.decoder.weight"].shape[0])
    _wrap_lora(model.bert.encoder.layer, sd, f"{DNA}bert.")
    model.load_state_dict(_strip(sd, DNA), strict=True)
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits.softmax(dim=-1).mean(dim=1)


def reference_text(sd: dict, inputs: dict, heads: int) -> torch.Tensor:
    """The original text tower: ``proj(BertModel(**x).last_hidden_state.mean(dim=1))``, the mask ignored in the mean."""
    prefix = f"{TXT}base_language_encoder."
    model = BertModel(_bert_config(sd, prefix, heads))  # with its (unused) pooler, as the original
    _wrap_lora(model.encoder.layer, sd, prefix)
    model.load_state_dict(_strip(sd, prefix), strict=True)
    with torch.no_grad():
        pooled = model.eval()(**inputs).last_hidden_state.mean(dim=1)
        return F.linear(pooled, sd[f"{TXT}proj.weight"], sd[f"{TXT}proj.bias"])


def make_inputs(d: Dims, batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    pixels = torch.rand(batch, 3, d.image_size, d.image_size, generator=generator)  # [0, 1], as the original
    barcodes = ["AACATTATATTTTATTTTTGGAATTTGAGCAGGAATAGTAGGAACTTCTCTTAGT" * 14, "ACGTNNACGTRYACGT" * 5][:batch]
    dna = BioscanDnaTokenizer(reference_mode=True)(barcodes, return_tensors="pt")
    text_ids = torch.randint(5, d.text_vocab, (batch, 20), generator=generator)
    text_mask = torch.ones(batch, 20, dtype=torch.long)
    text_mask[:, 9:] = 0  # padding, which the original's mean still includes
    text_ids[text_mask == 0] = 0
    return {
        "pixel_values": pixels,
        "dna_input_ids": dna["input_ids"],
        "dna_attention_mask": dna["attention_mask"],  # given, and ignored as by the original
        "input_ids": text_ids,
        "attention_mask": text_mask,
        "token_type_ids": torch.zeros_like(text_ids),
    }


def max_differences(model: BioscanClipModel, sd: dict, d: Dims, variant: str) -> dict[str, float]:
    """Max |ours - original| per tower, for the raw projections and the L2-normalised embeddings."""
    inputs = make_inputs(d)
    towers = VARIANT_TOWERS[variant]
    forward_inputs = {"pixel_values": inputs["pixel_values"]}
    if "dna" in towers:
        forward_inputs["dna_input_ids"] = inputs["dna_input_ids"]
        forward_inputs["dna_attention_mask"] = inputs["dna_attention_mask"]
    if "text" in towers:
        forward_inputs.update({k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    with torch.no_grad():
        out = model(**forward_inputs)
        ours = {"image": model.get_image_features(inputs["pixel_values"])}
        references = {"image": reference_image(sd, inputs["pixel_values"], d.image_heads)}
        if "dna" in towers:
            assert not bool(inputs["dna_attention_mask"].all())  # the short barcode has padding k-mers
            ours["dna"] = model.get_dna_features(inputs["dna_input_ids"], inputs["dna_attention_mask"])
            references["dna"] = reference_dna(sd, inputs["dna_input_ids"], d.dna_heads)
        if "text" in towers:
            ours["text"] = model.get_text_features(
                inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
            )
            text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            references["text"] = reference_text(sd, text_inputs, d.text_heads)
    diffs = {}
    for tower, reference in references.items():
        diffs[tower] = float((ours[tower] - reference).abs().max())
        normalised = getattr(out, f"{tower}_embeds")
        diffs[f"{tower}_normalized"] = float((normalised - F.normalize(reference, dim=-1)).abs().max())
    return diffs


# ---- fidelity -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANT_TOWERS))
def test_small_conversion_matches_the_original_towers(variant):
    sd = make_clibd_state_dict(variant, SMALL)
    model, report = convert_clibd_state_dict(sd, variant, num_attention_heads=SMALL.heads)
    diffs = max_differences(model, sd, SMALL, variant)
    print(variant, diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert sorted(report.towers) == sorted(VARIANT_TOWERS[variant])
    assert report.lora_merged == {"image": [0, 1]} and report.lora_rank == {"image": 4}
    assert float(model.logit_scale.detach()) == pytest.approx(float(sd["logit_scale"]))
    config = model.config
    assert (config.dna_pooling, config.dna_use_attention_mask, config.text_pooling) == (
        "softmax_mean",
        False,
        "mean_all",
    )
    assert config.image_config.layer_norm_eps == 1e-6 and config.image_config.qkv_bias
    if "dna" in VARIANT_TOWERS[variant]:
        assert f"{DNA}cls.predictions.bias" in report.dropped_keys


def test_lora_merge_matches_the_unmerged_computation():
    # The v1 (BIOSCAN-CLIP) layout: adapters on every tower's q and v.
    sd = make_clibd_state_dict("image_dna_text", SMALL, image_lora=4, bert_lora=4, seed=1)
    model, report = convert_clibd_state_dict(sd, "image_dna_text", num_attention_heads=SMALL.heads)
    assert report.lora_merged == {"image": [0, 1], "dna": [0, 1], "text": [0, 1]}
    diffs = max_differences(model, sd, SMALL, "image_dna_text")
    print("lora", diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    # The adapters matter: dropping them changes every tower's output far beyond the tolerance.
    without = {k: (torch.zeros_like(v) if ".linear_b_" in k or ".w_b." in k else v) for k, v in sd.items()}
    bare, _ = convert_clibd_state_dict(without, "image_dna_text", num_attention_heads=SMALL.heads)
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        for tower, args in (
            ("image", (inputs["pixel_values"],)),
            ("dna", (inputs["dna_input_ids"],)),
            ("text", (inputs["input_ids"], inputs["attention_mask"])),
        ):
            merged = getattr(model, f"get_{tower}_features")(*args)
            plain = getattr(bare, f"get_{tower}_features")(*args)
            assert (merged - plain).abs().max() > 100 * TOLERANCE, tower


def test_legacy_names_and_module_prefix_are_accepted():
    sd = make_clibd_state_dict("image_dna_text", SMALL)
    renames = (
        ("base_image_encoder", "lora_vit"),
        ("base_dna_encoder", "lora_barcode_bert"),
        ("base_language_encoder", "lora_bert"),
    )
    legacy = {}
    for key, value in sd.items():
        for new, old in renames:
            key = key.replace(new, old)
        legacy["module." + key] = value
    model, report = convert_clibd_state_dict(legacy, "auto", num_attention_heads=SMALL.heads)
    reference, _ = convert_clibd_state_dict(sd, "image_dna_text", num_attention_heads=SMALL.heads)
    assert report.variant == "image_dna_text" and report.stripped_module_prefix and report.legacy_renames > 0
    theirs = reference.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in model.state_dict().items())


@pytest.mark.slow
def test_full_size_conversion_matches_the_original_towers():
    sd = make_clibd_state_dict("image_dna_text", FULL)
    model, report = convert_clibd_state_dict(sd, "image_dna_text")  # default heads: 768 -> 12, 512 -> 8
    assert report.towers["image"] == {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "image_size": 224,
        "patch_size": 16,
        "projection_dim": 768,
    }
    assert report.towers["dna"]["vocab_size"] == 1027 and report.towers["dna"]["num_attention_heads"] == 12
    assert report.towers["text"]["num_hidden_layers"] == 4 and report.towers["text"]["num_attention_heads"] == 8
    diffs = max_differences(model, sd, FULL, "image_dna_text")
    print("full", diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs


# ---- refusing malformed checkpoints -------------------------------------------------------------------------------
def test_missing_extra_and_misshaped_keys_are_all_listed():
    sd = make_clibd_state_dict("image_dna_text", SMALL)
    missing = f"{IMG}blocks.1.mlp.fc2.bias"
    misshaped = f"{DNA}bert.encoder.layer.0.attention.self.key.weight"
    del sd[missing]
    sd["language_encoder.base_language_encoder.encoder.layer.0.extra.weight"] = torch.zeros(2)
    sd[misshaped] = torch.zeros(5, 5)
    with pytest.raises(ClibdCheckpointError) as caught:
        convert_clibd_state_dict(sd, "image_dna_text", num_attention_heads=SMALL.heads)
    error = caught.value
    assert error.missing == [missing]
    assert error.unexpected == ["language_encoder.base_language_encoder.encoder.layer.0.extra.weight"]
    assert error.mismatched == [f"{misshaped}: expected (32, 32), got (5, 5)"]
    for text in (missing, "extra.weight", misshaped, "1 missing keys", "1 unexpected keys", "1 mis-shaped"):
        assert text in str(error)


def test_wrong_variant_is_refused():
    with pytest.raises(ClibdCheckpointError, match="unexpected keys") as caught:
        convert_clibd_state_dict(
            make_clibd_state_dict("image_dna_text", SMALL), "image_dna", num_attention_heads=SMALL.heads
        )
    assert all(key.startswith("language_encoder.") for key in caught.value.unexpected)
    with pytest.raises(ClibdCheckpointError, match="text tower: cannot read its sizes"):
        convert_clibd_state_dict(
            make_clibd_state_dict("image_dna", SMALL), "image_dna_text", num_attention_heads=SMALL.heads
        )
    with pytest.raises(ClibdCheckpointError, match="variant: expected one of"):
        convert_clibd_state_dict({}, "image_only")


def test_heads_cannot_be_guessed_for_odd_widths():
    with pytest.raises(ClibdCheckpointError, match="--image-num-heads"):
        convert_clibd_state_dict(make_clibd_state_dict("image_dna", SMALL), "image_dna")


class PickledWrapper(OrderedDict):
    """A class the restricted unpickler does not know: stands for any non-tensor object in a checkpoint."""


def test_pickles_with_objects_fail_closed(tmp_path):
    sd = make_clibd_state_dict("image_dna", SMALL)
    path = tmp_path / "best.pth"
    torch.save(PickledWrapper(sd), path)
    with pytest.raises(ClibdCheckpointError, match=r"never does.*re-save its tensors alone"):
        load_clibd_checkpoint(path)
    # The way out the message names: the tensors re-saved alone convert.
    torch.save(dict(PickledWrapper(sd)), tmp_path / "plain.pth")
    assert set(load_clibd_checkpoint(tmp_path / "plain.pth")) == set(sd)
    # Plain non-tensor values pass the restricted unpickler but are still no state dict.
    torch.save({**sd, "epoch": 3}, path)
    with pytest.raises(ClibdCheckpointError, match=r"epoch \(int\)"):
        load_clibd_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ClibdCheckpointError, match="junk.pth"):
        load_clibd_checkpoint(tmp_path / "junk.pth")


# ---- the folder and the command line ------------------------------------------------------------------------------
def save_text_tokenizer(directory, vocab_size: int) -> None:
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "diptera",
        "sciaridae",
        "bradysia",
        "impatiens",
        "not_classified",
        "coleoptera",
    ]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    BertTokenizer(vocab={word: index for index, word in enumerate(words)}).save_pretrained(directory)


def test_cli_end_to_end_and_from_pretrained(tmp_path, capsys):
    from transformers import AutoProcessor

    sd = make_clibd_state_dict("image_dna_text", SMALL)
    checkpoint = tmp_path / "ckpt" / "bioscan_5m" / "image_dna_text_4gpu" / "best.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(sd, checkpoint)
    save_text_tokenizer(tmp_path / "bert-small", SMALL.text_vocab)
    out = tmp_path / "converted"
    heads = ["--image-num-heads", "2", "--dna-num-heads", "2", "--text-num-heads", "3"]
    argv = [
        "convert-clibd",
        str(checkpoint),
        "--variant",
        "image_dna_text",
        "--out",
        str(out),
        "--text-tokenizer",
        str(tmp_path / "bert-small"),
        *heads,
    ]
    assert cli_main(argv) == 0
    assert "merged LoRA adapters" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    card = (out / "README.md").read_text()
    assert sha256_of_file(checkpoint) in card and "bioscan_5m/image_dna_text_4gpu/best.pth" in card
    assert json.loads((out / "conversion_report.json").read_text())["lora_merged"] == {"image": [0, 1]}

    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    assert max(max_differences(model, sd, SMALL, "image_dna_text").values()) <= TOLERANCE
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    from PIL import Image

    batch = processor(
        images=[Image.new("RGB", (48, 40), (255, 255, 255))],
        dna=["ACGT" * 20],
        text=[{"order": "Diptera", "family": "Sciaridae", "genus": None, "species": None}],
    )
    # Not normalised, as the original; resized on float pixels as torchvision does (white can exceed 1 by an ulp).
    assert processor.image_processor.reference_mode
    assert float(batch["pixel_values"].max()) == pytest.approx(1.0, abs=1e-6)
    assert batch["pixel_values"].shape[-1] == SMALL.image_size
    assert batch["dna_input_ids"].shape == (1, 133) and int(batch["dna_input_ids"][0, 0]) == 0
    assert batch["input_ids"].shape == (1, 20)
    with torch.no_grad():
        assert model(**batch).dna_embeds.shape == (1, SMALL.embed)

    # A second run into the same folder is refused, and so is a damaged checkpoint; both with exit status 1.
    assert cli_main(argv) == 1
    assert "not empty" in capsys.readouterr().err
    del sd[f"{IMG}norm.bias"]
    torch.save(sd, checkpoint)
    assert cli_main([*argv, "--overwrite"]) == 1
    assert f"{IMG}norm.bias" in capsys.readouterr().err


def test_without_text_tokenizer_the_card_says_what_to_supply(tmp_path):
    sd = make_clibd_state_dict("image_text", SMALL)
    torch.save(sd, tmp_path / "best.pth")
    report = convert_clibd_checkpoint(
        tmp_path / "best.pth", "image_text", tmp_path / "out", num_attention_heads=SMALL.heads
    )
    assert report.source_sha256 == sha256_of_file(tmp_path / "best.pth")
    assert "text tokenizer was not supplied" in (tmp_path / "out" / "README.md").read_text()
    assert (tmp_path / "out" / "dna_tokenizer").is_dir() and (tmp_path / "out" / "preprocessor_config.json").is_file()
    save_text_tokenizer(tmp_path / "wrong", SMALL.text_vocab + 7)
    with pytest.raises(ValueError, match="word embeddings have 64 rows"):
        convert_clibd_checkpoint(
            tmp_path / "best.pth",
            "image_text",
            tmp_path / "out2",
            text_tokenizer=tmp_path / "wrong",
            num_attention_heads=SMALL.heads,
        )
    with pytest.raises(ValueError, match="original"):
        convert_clibd_checkpoint(tmp_path / "best.pth", "image_text", tmp_path / "out3", barcodebert_tokenizer="hub")


FRESH_PROCESS_LOAD = """
import sys
for name in ("modeling_bioscanclip", "bioscan_clip"):
    sys.modules[name] = None  # everything must come from the converted folder
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True, use_safetensors=True)
image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
dna_tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="dna_tokenizer", trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules")
assert not image_processor.do_normalize and dna_tokenizer.reference_mode
print(model.config.dna_pooling, dna_tokenizer(["ACGT" * 10], return_tensors="pt")["input_ids"].shape[1])
"""


@pytest.mark.slow
def test_folder_without_processor_loads_in_a_fresh_process(tmp_path):
    import os
    import subprocess
    import sys

    torch.save(make_clibd_state_dict("image_dna", SMALL), tmp_path / "best.pth")
    convert_clibd_checkpoint(tmp_path / "best.pth", "image_dna", tmp_path / "out", num_attention_heads=SMALL.heads)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_LOAD, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["softmax_mean", "133"]
