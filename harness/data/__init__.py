"""Data: corpora as token streams (corpus.py) and subword tokenizers trained on them (tokenizer.py)."""

from harness.data.corpus import (Corpus, DataConfig, load_corpus, sample_batch, stdlib_domain, validation_batches,
                                 validation_domains)

__all__ = ["Corpus", "DataConfig", "load_corpus", "sample_batch", "stdlib_domain", "validation_batches",
           "validation_domains"]
