"""AU semantic descriptions and their WordPiece tokenization (C-EXPR-NET's AU semantic encoding input).

The descriptions are package data (``abaw_ce/au_descriptions.json``, our own FACS-based wording). The
tokenizer is trained offline on them with HF ``tokenizers`` and saved as one JSON file; ``encode`` turns the
17 descriptions into fixed-size id, segment (sentence index) and padding-mask arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

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
    """A lower-casing WordPiece tokenizer trained on the descriptions only (offline, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    descriptions = descriptions or au_descriptions()
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    sentences = [s for sentences in descriptions.values() for s in sentences]
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

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
