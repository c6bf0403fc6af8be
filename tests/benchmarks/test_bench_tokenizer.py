"""Cost of `data.tokenizer = "bpe:4096"` on the embedded corpus (issue 13): training the BPE on the
stdlib's training split must take well under a minute on 2 cores; the first load also encodes
both splits; later loads read the cache and cost what a byte corpus costs.

    python -m pytest tests/benchmarks/test_bench_tokenizer.py -o addopts="" --benchmark-only
"""

from __future__ import annotations

from harness.data import tokenizer
from harness.data.corpus import _stdlib_split, load_corpus
from tests.benchmarks.conftest import tag


def test_train_bpe_4096_on_stdlib(benchmark):
    texts = tokenizer._texts(_stdlib_split(0.05).train)
    result = benchmark.pedantic(lambda: tokenizer.train_bpe(texts, 4096), rounds=3, warmup_rounds=0)
    tag(benchmark, "train bpe:4096 on the stdlib training split", megabytes=sum(map(len, texts)) / 1e6)
    assert result.get_vocab_size() == 4096


def test_first_and_cached_bpe_corpus_load(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_HARNESS_CACHE", str(tmp_path))
    folders = iter(range(100))

    def cold():  # NOTE: a fresh cache folder each round: train, encode both splits, write
        monkeypatch.setenv("MOE_HARNESS_CACHE", str(tmp_path / str(next(folders))))
        load_corpus.cache_clear()
        return load_corpus("stdlib", 0.05, "bpe:4096")

    benchmark.pedantic(cold, rounds=2, warmup_rounds=0)
    tag(benchmark, "first load of stdlib with bpe:4096 (train + encode + cache)",
        vs="train bpe:4096 on the stdlib training split")


def test_cached_bpe_corpus_load(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_HARNESS_CACHE", str(tmp_path))
    load_corpus.cache_clear()
    load_corpus("stdlib", 0.05, "bpe:4096")

    def warm():
        load_corpus.cache_clear()
        return load_corpus("stdlib", 0.05, "bpe:4096")

    corpus = benchmark.pedantic(warm, rounds=5, warmup_rounds=1)
    tag(benchmark, "cached load of stdlib with bpe:4096", vs="load stdlib as bytes")
    assert corpus.vocab_size == 4096


def test_byte_corpus_load(benchmark):
    def load():
        load_corpus.cache_clear()
        return load_corpus("stdlib", 0.05, "bytes")

    benchmark.pedantic(load, rounds=5, warmup_rounds=1)
    tag(benchmark, "load stdlib as bytes")
