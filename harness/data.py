"""Corpora -> token streams, with a fingerprint recorded in every run.

Sources (`data.source`):
  - `stdlib` (default): the running interpreter's standard-library `.py` sources, byte-level
    (vocab 256), read in sorted order, split into train/validation by file. No download.
  - a path or glob of UTF-8 text files: byte-level; split by file, or the tail of a single file.
  - a path or glob ending in `.bin`: nanoGPT-style uint16 token shards (files with `val` in
    their name are the validation split, else the tail of the stream).
  - `hf:NAME[:CONFIG]`: a Hugging Face dataset's `text` column through `datasets` (optional
    extra `moe-harness[hf]`; it must already be in the local cache).
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


@dataclass(kw_only=True)
class DataConfig:
    # stdlib | path or glob of text files | glob of uint16 .bin shards | hf:NAME[:CONFIG]
    source: str = "stdlib"
    # fraction of files (or of the stream's tail) held out for validation
    val_fraction: float = 0.05


@dataclass
class Corpus:
    train: torch.Tensor  # [N] token ids (uint8 for bytes, int32 for shards)
    val: torch.Tensor  # [M] token ids
    vocab_size: int
    fingerprint: dict = field(default_factory=dict)  # source, files, bytes, sha256


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


def _split_text_files(source: str, root: Path | None, paths: list[Path], val_fraction: float) -> Corpus:
    contents = [p.read_bytes() for p in paths]
    if len(paths) == 1:
        data = contents[0]
        cut = int(len(data) * (1 - val_fraction))
        train, val = [data[:cut]], [data[cut:]]
    else:
        rels = [str(p.relative_to(root)) if root else str(p) for p in paths]
        flags = [_is_val_file(rel, val_fraction) for rel in rels]
        if all(flags) or not any(flags):  # too few files for a hash split: hold out the last
            flags = [i == len(paths) - 1 for i in range(len(paths))]
        train = [c for c, v in zip(contents, flags) if not v]
        val = [c for c, v in zip(contents, flags) if v]
    if not any(train) or not any(val):
        raise ValueError(f"data.source = {source!r} is too small to give both a train and a validation split")
    return Corpus(_bytes_to_tensor(train), _bytes_to_tensor(val), 256, _fingerprint(source, contents))


def _stdlib(val_fraction: float) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted((p for p in root.rglob("*.py") if "site-packages" not in p.parts), key=lambda p: str(p.relative_to(root)))
    return _split_text_files("stdlib", root, paths, val_fraction)


def _bin_shards(source: str, paths: list[Path], val_fraction: float) -> Corpus:
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
    return Corpus(torch.from_numpy(train.astype(np.int32)), torch.from_numpy(val.astype(np.int32)), vocab, fingerprint)


def _hf_dataset(source: str, val_fraction: float) -> Corpus:
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
    return Corpus(_bytes_to_tensor(texts[:cut]), _bytes_to_tensor(texts[cut:]), 256, _fingerprint(source, texts))


@lru_cache(maxsize=4)
def load_corpus(source: str = "stdlib", val_fraction: float = 0.05) -> Corpus:
    """The corpus named by `source` (see the module docstring); cached per process."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction = {val_fraction!r} must be strictly between 0 and 1")
    if source == "stdlib":
        return _stdlib(val_fraction)
    if source.startswith("hf:"):
        return _hf_dataset(source, val_fraction)
    paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ValueError(
            f"data.source = {source!r}: no such file; use 'stdlib', a text file or glob, "
            "a glob of uint16 .bin shards, or 'hf:NAME'"
        )
    if all(p.suffix == ".bin" for p in paths):
        return _bin_shards(source, paths, val_fraction)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return _split_text_files(source, root, paths, val_fraction)


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


def validation_batches(tokens: torch.Tensor, num_batches: int, batch_size: int, seq_len: int):
    """A fixed validation set: evenly spaced windows, the same for every run and evaluation."""
    num_windows = num_batches * batch_size
    last = len(tokens) - seq_len - 1
    if last < 1:
        raise ValueError(f"the validation split ({len(tokens)} tokens) is shorter than model.seq_len = {seq_len}")
    starts = torch.linspace(0, last, num_windows).long()
    window = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return [(w[:, :-1], w[:, 1:]) for w in window.split(batch_size)]
