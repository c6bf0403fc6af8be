"""Subword tokens for text corpora: `data.tokenizer = "bpe:V"` (a byte-level BPE of V tokens).

The tokenizer is trained with Hugging Face `tokenizers` on the corpus's training split only,
then both splits are encoded once and cached on disk:

    $MOE_HARNESS_CACHE (default ~/.cache/moe-harness)/tokenizers/<key>/
        tokenizer.json   the trained tokenizer (load with tokenizers.Tokenizer.from_file)
        train.npy        the training split's token stream (uint16, or uint32 when V > 65536)
        val.npy          the validation split's token stream
        val_docs.npz     each validation document's length in tokens and its domain
        meta.json        vocabulary size, bytes, training time

The key is the corpus fingerprint (hash of every file), the validation fraction and V: a second
run reuses the cache, a changed corpus gets a new one. Workers that start together train once
(a file lock per key); the cache folder appears by one rename, so a killed worker leaves none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from filelock import FileLock

TOKENIZER_RE = re.compile(r"bytes|bpe:(\d+)")
MIN_VOCAB, MAX_VOCAB = 260, 1 << 20


def check_tokenizer(spec: str) -> int | None:
    """V of `bpe:V`, None for `bytes`; ValueError naming the allowed forms otherwise."""
    match = TOKENIZER_RE.fullmatch(spec) if isinstance(spec, str) else None
    if not match:
        raise ValueError(f"data.tokenizer = {spec!r} is not allowed; use 'bytes' (the default) or 'bpe:V' with a "
                         f"vocabulary size V, e.g. 'bpe:4096'")
    if match[1] is None:
        return None
    vocab = int(match[1])
    if not MIN_VOCAB <= vocab <= MAX_VOCAB:
        raise ValueError(f"data.tokenizer = {spec!r}: V must be between {MIN_VOCAB} (the 256 bytes and a few "
                         f"merges) and {MAX_VOCAB}")
    return vocab


def cache_root() -> Path:
    return Path(os.environ.get("MOE_HARNESS_CACHE", Path.home() / ".cache" / "moe-harness"))


def cache_dir(fingerprint: dict, val_fraction: float, vocab: int) -> Path:
    key = json.dumps([fingerprint["data_sha256"], fingerprint["data_bytes"], val_fraction, vocab])
    slug = re.sub(r"[^A-Za-z0-9]+", "_", str(fingerprint["data_source"]))[-40:].strip("_") or "corpus"
    return cache_root() / "tokenizers" / f"{slug}-bpe{vocab}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _texts(docs: list[bytes]) -> list[str]:
    # NOTE: a byte-level BPE sees str; the few non-UTF-8 files (4 latin-1 test files in the stdlib)
    # get U+FFFD for their odd bytes, and bits per byte counts the bytes of that text
    return [d.decode("utf-8", errors="replace") for d in docs]


def train_bpe(texts: list[str], vocab: int):
    """A byte-level BPE tokenizer of `vocab` tokens (fewer if the text has fewer merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def _encode(tokenizer, texts: list[str], dtype) -> tuple[np.ndarray, list[int]]:
    ids = [np.asarray(e.ids, dtype=dtype) for e in tokenizer.encode_batch(texts)]
    return (np.concatenate(ids) if ids else np.zeros(0, dtype)), [len(i) for i in ids]


def build(train_docs: list[bytes], val_docs: list[bytes], val_domains: list[str], fingerprint: dict,
          val_fraction: float, vocab: int) -> Path:
    """The cache folder for this corpus and V, trained and encoded now unless it exists."""
    final = cache_dir(fingerprint, val_fraction, vocab)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "meta.json").is_file():
            return final
        start = time.perf_counter()
        train_texts, val_texts = _texts(train_docs), _texts(val_docs)
        tokenizer = train_bpe(train_texts, vocab)
        train_s = time.perf_counter() - start
        dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
        train_ids, _ = _encode(tokenizer, train_texts, dtype)
        val_ids, val_lengths = _encode(tokenizer, val_texts, dtype)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        os.chmod(tmp, 0o755)  # NOTE: mkdtemp makes it private; a shared cache is read by every user
        try:
            tokenizer.save(str(tmp / "tokenizer.json"))
            np.save(tmp / "train.npy", train_ids)
            np.save(tmp / "val.npy", val_ids)
            np.savez(tmp / "val_docs.npz", lengths=np.asarray(val_lengths, dtype=np.int64),
                     domains=np.asarray(val_domains, dtype=str))
            meta = {"vocab_size": tokenizer.get_vocab_size(), "train_s": round(train_s, 2),
                    "encode_s": round(time.perf_counter() - start - train_s, 2),
                    "train_bytes": sum(len(t.encode()) for t in train_texts),
                    "val_bytes": sum(len(t.encode()) for t in val_texts),
                    "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
                    "tokenizers_version": _version()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            shutil.rmtree(final, ignore_errors=True)  # NOTE: a folder without meta.json is incomplete
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _version() -> str:
    import tokenizers

    return tokenizers.__version__


def load_tokenizer(folder: Path):
    """The cached tokenizer, for decoding tokens back to text."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
