"""Corpora -> token streams, with a fingerprint recorded in every run.

Sources (`data.source`):
  - `stdlib` (default): the running interpreter's standard-library `.py` sources, read in
    sorted order, split into train/validation by file. No download.
  - a path or glob of UTF-8 text files: split by file, or the tail of a single file.
  - a path or glob ending in `.bin`: nanoGPT-style uint16 token shards (files with `val` in
    their name are the validation split, else the tail of the stream).
  - `hf:NAME[:CONFIG]`: a Hugging Face dataset's `text` column through `datasets` (optional
    extra `moe-harness[hf]`; it must already be in the local cache).

Text sources are bytes (vocab 256, `data.tokenizer = "bytes"`) or subwords (`"bpe:V"`: a
byte-level BPE trained on the training split only and cached, tokenizer.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import harness.data.tokenizer as tokenizer
from harness.data.tokenizer import check_tokenizer


@dataclass(kw_only=True)
class DataConfig:
    # stdlib | path or glob of text files | glob of uint16 .bin shards | hf:NAME[:CONFIG]
    source: str = "stdlib"
    # fraction of files (or of the stream's tail) held out for validation
    val_fraction: float = 0.05
    # text sources: bytes (vocab 256) or bpe:V, a byte-level BPE of V tokens trained on the training split
    tokenizer: str = "bytes"

    def __post_init__(self) -> None:
        check_tokenizer(self.tokenizer)


@dataclass
class Corpus:
    train: torch.Tensor  # [N] token ids (uint8 for bytes, int32 for shards)
    val: torch.Tensor  # [M] token ids
    vocab_size: int
    fingerprint: dict = field(default_factory=dict)  # source, files, bytes, sha256 (+ tokenizer)
    # validation tokens per byte of validation text (1 for bytes; NaN unknown): bits per byte =
    # val loss / ln 2 x this
    tokens_per_byte: float = 1.0
    # validation documents: where each starts in `val` and its domain (index into `domains`); the
    # stdlib's domain is a file's top-level module, a text glob's its file. Empty: no domains
    val_doc_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_doc_domain: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    domains: list[str] = field(default_factory=list)

    def val_domains(self, positions: torch.Tensor) -> torch.Tensor | None:
        """Domain index of each position of `val` (any shape), or None without domains."""
        if not self.domains:
            return None
        doc = np.searchsorted(self.val_doc_starts, positions.numpy(), side="right") - 1
        return torch.from_numpy(np.asarray(self.val_doc_domain[doc]))


def _is_val_file(rel: str, val_fraction: float) -> bool:
    # NOTE: a hash of the relative path, so the split is fixed across machines and file orders
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 10_000 < val_fraction * 10_000


def _fingerprint(source: str, chunks: list[bytes]) -> dict:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return {"data_source": source, "data_files": len(chunks), "data_bytes": sum(map(len, chunks)),
            "data_sha256": digest.hexdigest()[:16]}


def _bytes_to_tensor(chunks: list[bytes]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(b"".join(chunks), dtype=np.uint8).copy())


@dataclass
class TextSplit:
    """A text corpus split by file, before tokenisation: each split's documents and domains."""
    train: list[bytes]
    val: list[bytes]
    val_domains: list[str]  # one per validation document
    fingerprint: dict


def split_text_files(source: str, root: Path | None, paths: list[Path], val_fraction: float,
                     domain_of=None) -> TextSplit:
    """Train and validation documents of text files: by a hash of each file's path, or the tail of
    a single file. `domain_of(relative path)` names a document's domain (default: the path)."""
    contents = [p.read_bytes() for p in paths]
    rels = [str(p.relative_to(root)) if root else str(p) for p in paths]
    if len(paths) == 1:
        data = contents[0]
        cut = int(len(data) * (1 - val_fraction))
        train, val, val_rels = [data[:cut]], [data[cut:]], rels
    else:
        flags = [_is_val_file(rel, val_fraction) for rel in rels]
        if all(flags) or not any(flags):  # too few files for a hash split: hold out the last
            flags = [i == len(paths) - 1 for i in range(len(paths))]
        train = [c for c, v in zip(contents, flags) if not v]
        val = [c for c, v in zip(contents, flags) if v]
        val_rels = [r for r, v in zip(rels, flags) if v]
    if not any(train) or not any(val):
        raise ValueError(f"data.source = {source!r} is too small to give both a train and a validation split")
    return TextSplit(train, val, [(domain_of or str)(r) for r in val_rels], _fingerprint(source, contents))


def with_domains(corpus: Corpus, doc_lengths: list[int], doc_domains: list[str]) -> Corpus:
    """`corpus` with its validation documents' starts (from their lengths in tokens) and domains."""
    names = sorted(set(doc_domains))
    index = {name: i for i, name in enumerate(names)}
    corpus.val_doc_starts = np.concatenate([[0], np.cumsum(doc_lengths)[:-1]]).astype(np.int64)
    corpus.val_doc_domain = np.array([index[d] for d in doc_domains], dtype=np.int64)
    corpus.domains = names
    return corpus


def _byte_corpus(split: TextSplit) -> Corpus:
    corpus = Corpus(_bytes_to_tensor(split.train), _bytes_to_tensor(split.val), 256,
                    {**split.fingerprint, "tokenizer_vocab": 256})
    return with_domains(corpus, [len(d) for d in split.val], split.val_domains)


def _bpe_corpus(split: TextSplit, vocab: int, val_fraction: float) -> Corpus:
    folder = tokenizer.build(split.train, split.val, split.val_domains, split.fingerprint, val_fraction, vocab)
    meta = json.loads((folder / "meta.json").read_text())
    docs = np.load(folder / "val_docs.npz")
    train, val = (torch.from_numpy(np.load(folder / f"{name}.npy").astype(np.int32)) for name in ("train", "val"))
    fingerprint = {**split.fingerprint, "tokenizer_vocab": meta["vocab_size"], "tokenizer_train_s": meta["train_s"],
                   "tokenizer_path": str(folder)}
    corpus = Corpus(train, val, meta["vocab_size"], fingerprint, meta["val_tokens"] / max(meta["val_bytes"], 1))
    return with_domains(corpus, docs["lengths"].tolist(), docs["domains"].tolist())


def _text_corpus(split: TextSplit, tokenizer_spec: str, val_fraction: float) -> Corpus:
    vocab = check_tokenizer(tokenizer_spec)
    return _byte_corpus(split) if vocab is None else _bpe_corpus(split, vocab, val_fraction)


def stdlib_domain(rel: str) -> str:
    """A stdlib file's domain: its top-level module (`email/parser.py` -> `email`, `os.py` -> `os`)."""
    return Path(rel).parts[0].removesuffix(".py")


def _stdlib_split(val_fraction: float) -> TextSplit:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted((p for p in root.rglob("*.py") if "site-packages" not in p.parts), key=lambda p: str(p.relative_to(root)))
    return split_text_files("stdlib", root, paths, val_fraction, stdlib_domain)


def _bin_shards(source: str, paths: list[Path], val_fraction: float, tokenizer_spec: str) -> Corpus:
    if tokenizer_spec != "bytes":
        raise ValueError(f"data.tokenizer = {tokenizer_spec!r} does not apply to data.source = {source!r}: .bin "
                         "shards hold token ids already; use data.tokenizer = 'bytes' (the default) with them")
    torn = [str(p) for p in paths if p.stat().st_size % 2]
    if torn:
        raise ValueError(f"data.source = {source!r}: {', '.join(torn)} has an odd number of bytes, so it is not whole "
                         "uint16 tokens (a truncated or foreign file); .bin shards hold 2 bytes per token")
    arrays = [np.fromfile(p, dtype=np.uint16) for p in paths]
    is_val = ["val" in p.name for p in paths]
    if any(is_val) and not all(is_val):
        train = np.concatenate([a for a, v in zip(arrays, is_val) if not v])
        val = np.concatenate([a for a, v in zip(arrays, is_val) if v])
    else:
        stream = np.concatenate(arrays)
        cut = int(len(stream) * (1 - val_fraction))
        train, val = stream[:cut], stream[cut:]
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"data.source = {source!r} holds too few tokens for a train and a validation split")
    vocab = int(max(train.max(), val.max())) + 1
    vocab = (vocab + 63) // 64 * 64  # NOTE: round up, as nanoGPT pads GPT-2's 50257 to 50304
    fingerprint = _fingerprint(source, [a.tobytes() for a in arrays])
    return Corpus(torch.from_numpy(train.astype(np.int32)), torch.from_numpy(val.astype(np.int32)), vocab,
                  {**fingerprint, "tokenizer_vocab": vocab}, math.nan)


def _hf_split(source: str, val_fraction: float) -> TextSplit:
    try:
        import datasets
    except ImportError as err:
        raise ValueError(
            f"data.source = {source!r} needs the optional `datasets` package: pip install 'moe-harness[hf]'"
        ) from err
    name, _, config = source[3:].partition(":")
    ds = datasets.load_dataset(name, config or None, split="train")
    if "text" not in ds.column_names:
        raise ValueError(f"data.source = {source!r} has no 'text' column; columns: {ds.column_names}")
    texts = [t.encode("utf-8") for t in ds["text"]]
    cut = max(1, int(len(texts) * (1 - val_fraction)))
    return TextSplit(texts[:cut], texts[cut:], [source] * (len(texts) - cut), _fingerprint(source, texts))


@lru_cache(maxsize=4)
def load_corpus(source: str = "stdlib", val_fraction: float = 0.05, tokenizer: str = "bytes") -> Corpus:
    """The corpus named by `source` (see the module docstring) in `tokenizer`'s tokens; cached per
    process (and, for BPE, on disk)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction = {val_fraction!r} must be strictly between 0 and 1")
    if source == "stdlib":
        return _text_corpus(_stdlib_split(val_fraction), tokenizer, val_fraction)
    if source.startswith("hf:"):
        return _text_corpus(_hf_split(source, val_fraction), tokenizer, val_fraction)
    paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ValueError(
            f"data.source = {source!r}: no such file; use 'stdlib', a text file or glob, "
            "a glob of uint16 .bin shards, or 'hf:NAME'"
        )
    if all(p.suffix == ".bin" for p in paths):
        return _bin_shards(source, paths, val_fraction, tokenizer)
    shards = [p.name for p in paths if p.suffix == ".bin"]
    if shards:  # NOTE: a token shard read as text would be trained on as bytes, without a word
        raise ValueError(f"data.source = {source!r} matches uint16 token shards {shards[:3]} and text files "
                         f"{[p.name for p in paths if p.suffix != '.bin'][:3]}; a source is one kind: use a glob of "
                         "only .bin shards (e.g. 'data/*.bin') or only text files (e.g. 'data/*.txt')")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return _text_corpus(split_text_files(source, root, paths, val_fraction), tokenizer, val_fraction)


def sample_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator,
                 rank: int = 0, world: int = 1):
    """Random windows: inputs and next-token targets, each [B, L].

    Under data parallelism every rank draws the same world x B starts and keeps its slice, so
    N ranks x B see exactly the batch one process x N B would.
    """
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size * world,), generator=gen)
    starts = starts[rank * batch_size:(rank + 1) * batch_size]
    window = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return window[:, :-1], window[:, 1:]


def validation_starts(num_tokens: int, num_windows: int, seq_len: int) -> torch.Tensor:
    """Starts of the fixed validation windows: evenly spaced, the same for every run and evaluation."""
    last = num_tokens - seq_len - 1
    if last < 1:
        raise ValueError(f"the validation split ({num_tokens} tokens) is shorter than model.seq_len = {seq_len}")
    return torch.linspace(0, last, num_windows).long()


def validation_batches(tokens: torch.Tensor, num_batches: int, batch_size: int, seq_len: int):
    """A fixed validation set: [B, L] inputs and targets of evenly spaced windows."""
    starts = validation_starts(len(tokens), num_batches * batch_size, seq_len)
    window = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return [(w[:, :-1], w[:, 1:]) for w in window.split(batch_size)]


def validation_domains(corpus: Corpus, num_batches: int, batch_size: int, seq_len: int):
    """Per validation batch, the [B, L] domain index of each input token (None without domains)."""
    starts = validation_starts(len(corpus.val), num_batches * batch_size, seq_len)
    domains = corpus.val_domains(starts[:, None] + torch.arange(seq_len))
    return None if domains is None else list(domains.split(batch_size))
