"""Subword corpora (data.tokenizer = "bpe:V"): trained on the training split only, cached, lossless."""

import random

import pytest
import torch

from harness.data import tokenizer
from harness.suites.keys import resolve
from harness.data.corpus import load_corpus
from harness.engine.train import run

COMMON = ["router", "expert", "balance", "token", "loss", "bias", "gate", "layer", "the", "of"]


@pytest.fixture
def text_glob(tmp_path, monkeypatch):
    """20 ASCII files: common words plus one made-up word per file, repeated (BPE merges it whole
    when it trains on that file)."""
    monkeypatch.setenv("MOE_HARNESS_CACHE", str(tmp_path / "cache"))
    load_corpus.cache_clear()
    rng = random.Random(0)
    words = {}
    for i in range(20):
        word = "".join(rng.choice("qxzjvwk") for _ in range(7))
        words[f"doc{i:02d}.txt"] = word
        body = [rng.choice(COMMON) for _ in range(300)] + [word] * 40
        rng.shuffle(body)
        (tmp_path / f"doc{i:02d}.txt").write_text(" ".join(body) + "\n")
    yield str(tmp_path / "*.txt"), words
    load_corpus.cache_clear()


def test_bpe_is_trained_on_the_training_split_only(text_glob):
    source, words = text_glob
    corpus = load_corpus(source, 0.2, "bpe:512")
    val_files = set(corpus.domains)  # a text glob's validation domains are its files
    assert val_files and val_files < set(words)
    train_text = " ".join((p := source.rsplit("/", 1)[0] + "/" + name) and open(p).read()
                          for name in sorted(set(words) - val_files))
    tok = tokenizer.load_tokenizer(corpus.fingerprint["tokenizer_path"])
    pieces = [tok.decode([i]) for i in range(tok.get_vocab_size())]
    merged = [p for p in pieces if len(p) > 1 and "\ufffd" not in p]  # single bytes >= 0x80 decode to U+FFFD
    assert len(merged) > 50  # beyond the 256 single bytes every vocabulary starts with
    for piece in merged:
        assert piece in train_text, f"token {piece!r} is not in the training text"
    for name, word in words.items():
        pieces = len(tok.encode(" " + word).ids)
        assert (pieces > 1) if name in val_files else (pieces == 1), (name, word, pieces)


def test_bpe_tokens_decode_back_to_the_text(text_glob):
    source, _ = text_glob
    corpus = load_corpus(source, 0.2, "bpe:512")
    tok = tokenizer.load_tokenizer(corpus.fingerprint["tokenizer_path"])
    for text in ["router expert balance", "  two  spaces\tand a tab\n", "ünïcödé → 漢字 🙂", "def f(x):\n    return x"]:
        assert tok.decode(tok.encode(text).ids) == text
    # the cached streams are the encoded splits: decoding the validation stream gives its files' text
    val_text = tok.decode(corpus.val.tolist())
    assert all(word in val_text for word in COMMON[:3]) and corpus.val.max() < corpus.vocab_size <= 512
    assert 0 < corpus.tokens_per_byte < 1  # subwords: fewer tokens than bytes


def test_bpe_cache_is_reused_and_a_changed_corpus_retrains(text_glob, monkeypatch):
    source, words = text_glob
    first = load_corpus(source, 0.2, "bpe:512")
    load_corpus.cache_clear()

    def refuse(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(tokenizer, "train_bpe", refuse)
    again = load_corpus(source, 0.2, "bpe:512")
    assert again.fingerprint["tokenizer_path"] == first.fingerprint["tokenizer_path"]
    assert torch.equal(again.train, first.train) and torch.equal(again.val, first.val)
    load_corpus.cache_clear()
    path = source.rsplit("/", 1)[0] + "/doc00.txt"
    with open(path, "a") as f:
        f.write("a changed corpus\n")
    with pytest.raises(AssertionError, match="trained again"):
        load_corpus(source, 0.2, "bpe:512")


@pytest.mark.parametrize("spec, match", [
    ("bpe", r"data.tokenizer = 'bpe' is not allowed; use 'bytes'.*'bpe:V'"),
    ("bpe:100", "V must be between 260"),
    ("sentencepiece:4096", "is not allowed"),
])
def test_bad_tokenizer_names_the_allowed_forms(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve({"data.tokenizer": spec})


def test_model_vocab_follows_the_tokenizer_unless_set(tmp_path):
    assert resolve({"data.tokenizer": "bpe:4096"}).model.vocab_size == 4096
    assert resolve({"data.tokenizer": "bpe:4096", "model.vocab_size": 5000}).model.vocab_size == 5000
    with pytest.raises(ValueError, match=r"model.vocab_size = 1000 is smaller than data.tokenizer = 'bpe:4096'"):
        resolve({"data.tokenizer": "bpe:4096", "model.vocab_size": 1000})
    (tmp_path / "a.bin").write_bytes(bytes(4000))
    with pytest.raises(ValueError, match="does not apply to data.source.*shards hold token ids"):
        load_corpus(str(tmp_path / "*.bin"), 0.1, "bpe:512")


def test_a_subword_run_records_its_tokenizer_and_bits_per_byte(text_glob, tiny_settings):
    source, _ = text_glob
    record = run(resolve({**tiny_settings, "data.source": source, "data.val_fraction": 0.2,
                          "data.tokenizer": "bpe:300"})).record
    assert record["data.tokenizer"] == "bpe:300" and record["model.vocab_size"] == 300
    assert record["tokenizer_vocab"] <= 300 and record["tokenizer_train_s"] >= 0
    tokens_per_byte = load_corpus(source, 0.2, "bpe:300").tokens_per_byte
    assert record["val_bpb"] == pytest.approx(record["val_loss"] / 0.6931471805599453 * tokens_per_byte)
    byte_record = run(resolve({**tiny_settings, "data.source": source, "data.val_fraction": 0.2})).record
    assert byte_record["val_bpb"] == pytest.approx(byte_record["val_loss"] / 0.6931471805599453)
    assert byte_record["tokenizer_vocab"] == 256


def test_the_report_shows_bits_per_byte_when_a_run_is_on_subwords():
    import pandas as pd

    from harness.analysis.report import summary as report

    runs = pd.DataFrame({"variant": ["a", "b"], "seed": 0, "status": "ok", "val_loss": [1.4, 3.1],
                         "val_bpb": [2.02, 1.31], "data.tokenizer": ["bytes", "bpe:4096"]})
    assert list(report.summary_table(runs, report.summary_spec(runs)).columns[:3]) == ["runs", "val loss", "val bits/byte"]
    assert "val bits/byte" not in report.summary_table(runs.iloc[:1], report.summary_spec(runs.iloc[:1])).columns
