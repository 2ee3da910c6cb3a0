"""A small WordPiece tokenizer for taxonomy strings, trained offline on the names of a dataset.

The paper's text tower is BERT-small with its English WordPiece vocabulary. Without network access we build a
vocabulary from the taxonomy strings themselves (orders, families, genera, epithets); character pieces let it
encode names never seen in training. The result is a standard ``BertTokenizerFast``, loadable with ``AutoTokenizer``
and needing none of our code.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast

from modeling_bioscanclip.constants_bioscanclip import NOT_CLASSIFIED

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_taxonomy_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> BertTokenizerFast:
    """Builds a lower-casing WordPiece tokenizer from taxonomy strings, deterministically.

    The vocabulary is the special tokens, every letter and character seen (alone and as a ``##`` continuation), then the most
    frequent whole words (ties broken alphabetically) up to ``vocab_size``. Known names are one token each; an
    unseen name falls back to known pieces. (The `tokenizers` WordPiece trainer is not deterministic from run to
    run, and a training run must be reproducible bit for bit.)

    Args:
        texts (`Iterable[str]`): e.g. ``"Diptera Sciaridae Bradysia Bradysia impatiens"`` strings.
        vocab_size (`int`, *optional*, defaults to 2000): upper bound of the vocabulary size (the characters are
            always kept, so a tiny bound can be exceeded).

    Returns:
        `BertTokenizerFast` with ``[CLS] ... [SEP]`` framing and ``[PAD]`` id 0.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 30:
        raise ValueError(f"vocab_size: expected at least {len(SPECIAL_TOKENS) + 30}, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in [*texts, NOT_CLASSIFIED]:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    # Every letter, seen or not, so that any Latin name can be spelt out.
    characters = sorted({character for word in counts for character in word} | set(string.ascii_lowercase))
    tokens = SPECIAL_TOKENS + characters + ["##" + character for character in characters]
    words = [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if len(word) > 1]
    tokens += words[: max(0, vocab_size - len(tokens))]
    tokenizer = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(tokens)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokens.index("[CLS]"), tokens.index("[SEP]")
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
