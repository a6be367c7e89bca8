"""AU semantic descriptions and their WordPiece tokenization (C-EXPR-NET's AU semantic encoding input).

The descriptions are package data (``abaw_ce/au_descriptions.json``, our own FACS-based wording). The
tokenizer's vocabulary is learnt offline from them (deterministically) and it is saved as one JSON file;
``encode`` turns the 17 descriptions into fixed-size id, segment (sentence index) and padding-mask arrays.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers import models as tokenizer_models

from abaw_ce import labels

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def au_descriptions(aus: tuple[int, ...] = labels.CEXPR_AUS) -> dict[int, list[str]]:
    """AU number -> its description sentences, in ``aus`` order."""
    data = json.loads(resources.files("abaw_ce").joinpath("au_descriptions.json").read_text(encoding="utf-8"))
    missing = [au for au in aus if str(au) not in data]
    if missing:
        raise KeyError(f"no description for AU(s) {missing}")
    return {au: list(data[str(au)]) for au in aus}


def train_tokenizer(descriptions: dict[int, list[str]] | None = None, vocab_size: int = 400):
    """A lower-casing WordPiece tokenizer (HF ``tokenizers``) whose vocabulary is learnt from the descriptions.

    The vocabulary is the special tokens, every character seen (alone and as a ``##`` continuation, so no
    word is unknown) and then the most frequent whole words, ties in alphabetical order, up to ``vocab_size``.
    It is built here rather than by ``tokenizers``' WordPiece trainer because that trainer breaks frequency
    ties in a per-process hash order: its vocabulary, and so every model trained on it, changed from run to
    run.
    """
    descriptions = descriptions or au_descriptions()
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for sentences in descriptions.values():
        for sentence in sentences:
            counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(sentence)))
    chars = sorted({c for word in counts for c in word})
    vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if w not in vocab]
    vocab += words[:max(0, vocab_size - len(vocab))]
    tokenizer = Tokenizer(tokenizer_models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = splitter
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def load_tokenizer(path: str | Path):
    return Tokenizer.from_file(str(path))


@dataclass
class EncodedDescriptions:
    """(A, T) token ids, segment ids (sentence number) and mask (1 = real token) for A descriptions."""
    ids: np.ndarray
    segments: np.ndarray
    mask: np.ndarray


def encode(tokenizer, descriptions: dict[int, list[str]] | None = None, max_tokens: int = 80,
           max_segments: int = 8) -> EncodedDescriptions:
    """[CLS] s1 [SEP] s2 [SEP] ... per AU, cut at ``max_tokens``; segment ids count sentences (capped)."""
    descriptions = descriptions or au_descriptions()
    pad = tokenizer.token_to_id("[PAD]")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids = np.full((len(descriptions), max_tokens), pad, dtype=np.int64)
    segments = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, sentences in enumerate(descriptions.values()):
        tokens, segs = [cls], [0]
        for s, sentence in enumerate(sentences):
            piece = tokenizer.encode(sentence, add_special_tokens=False).ids + [sep]
            tokens += piece
            segs += [min(s, max_segments - 1)] * len(piece)
        n = min(len(tokens), max_tokens)
        ids[row, :n], segments[row, :n], mask[row, :n] = tokens[:n], segs[:n], 1
    return EncodedDescriptions(ids, segments, mask)
