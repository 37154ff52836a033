"""Corpus determinism and shape; the word-level tokenizer's HF round trip."""
from transformers import AutoTokenizer

from varpo.testbed.corpus import corpus_vocabulary, generate_corpus
from varpo.testbed.tokenizer import BOS, EOS, PAD, UNK, train_tokenizer


def test_corpus_is_a_function_of_the_seed():
    a, b, c = generate_corpus(300, seed=7), generate_corpus(300, seed=7), generate_corpus(300, seed=8)
    assert a == b
    assert a != c
    assert generate_corpus(50, seed=7) == a[:50]  # a prefix does not depend on n


def test_corpus_shape():
    texts = generate_corpus(1000, seed=0, min_tokens=10, max_tokens=20)
    vocab = set(corpus_vocabulary())
    assert 200 <= len(vocab) <= 600
    for t in texts:
        n = len(t.continuation.split())
        assert 10 <= n <= 20
        assert t.full == " ".join(t.full.split())  # single spaces, no stray whitespace
        assert set(t.full.split()) <= vocab
        assert t.opening.endswith(" .") and -1.0 <= t.polarity <= 1.0
    assert len({t.opening for t in texts}) > 500  # prompts are varied


def test_tokenizer_round_trip(tmp_path):
    texts = [t.full for t in generate_corpus(400, seed=2)]
    tok = train_tokenizer(texts, vocab_size=1000)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == (PAD, BOS, EOS, UNK)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    for text in [t.full for t in generate_corpus(50, seed=3)]:
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id and loaded.eos_token_id not in ids
        assert loaded.decode(ids, skip_special_tokens=True) == text
        assert len(ids) == len(text.split()) + 1  # word level: one id per word, plus BOS
    # unseen words map to UNK rather than failing
    assert loaded("zyzzyva the")["input_ids"] == [1, loaded.unk_token_id, loaded.convert_tokens_to_ids("the")]
    # batch padding with the explicit pad id
    batch = loaded(["the food", "the food was great"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0] == [1, 1, 1, 0, 0]
