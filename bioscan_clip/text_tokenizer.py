"""A small WordPiece tokenizer for taxonomy strings, trained offline on the names of a dataset.

The paper's text tower is BERT-small with its English WordPiece vocabulary. Without network access we train a
vocabulary on the taxonomy strings themselves (orders, families, genera, epithets): sub-words let it encode
species never seen in training. The result is a standard ``BertTokenizerFast``, loadable with ``AutoTokenizer``
and needing none of our code.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast

from modeling_bioscanclip.constants_bioscanclip import NOT_CLASSIFIED

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_taxonomy_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 1) -> BertTokenizerFast:
    """Trains a lower-casing WordPiece tokenizer on taxonomy strings.

    Args:
        texts (`Iterable[str]`): e.g. ``"Diptera Sciaridae Bradysia Bradysia impatiens"`` strings.
        vocab_size (`int`, *optional*, defaults to 2000): upper bound of the vocabulary size.
        min_frequency (`int`, *optional*, defaults to 1): rarer merges are not kept.

    Returns:
        `BertTokenizerFast` with ``[CLS] ... [SEP]`` framing and ``[PAD]`` id 0.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 30:
        raise ValueError(f"vocab_size: expected at least {len(SPECIAL_TOKENS) + 30}, got {vocab_size}")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    tokenizer.train_from_iterator(list(texts) + [NOT_CLASSIFIED], trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
