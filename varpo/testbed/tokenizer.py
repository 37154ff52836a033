"""A word-level tokenizer for the generated corpus, trained with `tokenizers`, saved in HF format.

Texts are space-separated tokens (punctuation included), so encode → decode is the identity on
corpus text. Encoding prepends [BOS] (a post-processor); [EOS] is *not* appended automatically:
pretraining appends it to whole texts so the LM learns to stop, while prompts stay open-ended.
Special ids: [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A `transformers` fast tokenizer with a word-level vocabulary learnt from `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    # WordPiece's decoder with an impossible prefix joins tokens with single spaces and, unlike
    # the default, is serialised, so a reloaded tokenizer decodes the same way.
    tok.decoder = decoders.WordPiece(prefix="\x00##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1024, clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))
