"""Every label order, dataset index map and the emotion→AU prior of the kit.

This module is the single source of truth: other modules import these names and never re-declare an
order. Orders follow shared/DESIGN.md section 4.
"""
from __future__ import annotations

import numpy as np

from abaw_ce.errors import OptionError

# --- basic emotions: the 6-way multi-label head's output order (RAF-DB order) -------------------------
BASIC_EMOTIONS: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger")
BASIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(BASIC_EMOTIONS)}

# The 7-way softmax of the multi-task track (FaceBehaviorNet, SJMT): neutral, then the 6 basic emotions.
SEVEN_EXPRESSIONS: tuple[str, ...] = ("neutral",) + BASIC_EMOTIONS

# Expression states that carry no basic emotion; how they become targets is a config choice.
NON_BASIC_STATES: tuple[str, ...] = ("neutral", "other", "contempt")

# Adverb used in compound names, per basic emotion ("Sadly_Fearful" = sadness + fear).
_ADVERB = {"surprise": "Surprised", "fear": "Fearfully", "disgust": "Disgustedly",
           "happiness": "Happily", "sadness": "Sadly", "anger": "Angrily"}

# --- the 7 challenge classes, submission header order, with their constituent pairs -----------------
CHALLENGE_COMPOUNDS: tuple[str, ...] = (
    "Fearfully_Surprised", "Happily_Surprised", "Sadly_Surprised", "Disgustedly_Surprised",
    "Angrily_Surprised", "Sadly_Fearful", "Sadly_Angry",
)
CHALLENGE_PAIRS: tuple[tuple[str, str], ...] = (
    ("fear", "surprise"), ("happiness", "surprise"), ("sadness", "surprise"), ("disgust", "surprise"),
    ("anger", "surprise"), ("sadness", "fear"), ("sadness", "anger"),
)
# The same pairs as index pairs into BASIC_EMOTIONS, for vectorised fusion.
CHALLENGE_PAIR_INDEX: np.ndarray = np.array(
    [[BASIC_INDEX[a], BASIC_INDEX[b]] for a, b in CHALLENGE_PAIRS], dtype=np.int64)


def challenge_classes(targets: np.ndarray) -> np.ndarray:
    """Challenge class 0..6 of each 6-way multi-label row (>= 0.5 = on) whose on-set is exactly a challenge
    pair, else -1 (basic or unlabelled rows, and compounds outside the 7)."""
    return pair_classes(targets, CHALLENGE_PAIR_INDEX)


def pair_classes(targets: np.ndarray, pair_index: np.ndarray) -> np.ndarray:
    """Index k of the pair ``pair_index[k]`` that is exactly each row's on-set (>= 0.5 = on), else -1."""
    on = np.asarray(targets) >= 0.5
    out = np.full(len(on), -1, dtype=np.int64)
    two = on.sum(axis=1) == 2
    for k, (a, b) in enumerate(pair_index):
        out[two & on[:, a] & on[:, b]] = k
    return out

# --- C-EXPR-DB: 12 compounds + Other (the 7 challenge classes first, same order) ----------------------
CEXPR_COMPOUNDS: tuple[str, ...] = CHALLENGE_COMPOUNDS + (
    "Sadly_Disgusted", "Fearfully_Angry", "Fearfully_Disgusted", "Angrily_Disgusted", "Happily_Disgusted",
)
CEXPR_PAIRS: tuple[tuple[str, str], ...] = CHALLENGE_PAIRS + (
    ("sadness", "disgust"), ("fear", "anger"), ("fear", "disgust"), ("anger", "disgust"),
    ("happiness", "disgust"),
)
CEXPR_PAIR_INDEX: np.ndarray = np.array([[BASIC_INDEX[a], BASIC_INDEX[b]] for a, b in CEXPR_PAIRS], dtype=np.int64)
CEXPR_CLASSES: tuple[str, ...] = CEXPR_COMPOUNDS + ("Other",)
CEXPR_OTHER_INDEX: int = len(CEXPR_COMPOUNDS)
COMPOUND_PAIRS: dict[str, tuple[str, str]] = dict(zip(CEXPR_COMPOUNDS, CEXPR_PAIRS))
# Annotated frames per class in C-EXPR-DB (Kollias 2023, Table 2): the class balance of real test videos.
CEXPR_FRAME_COUNTS: dict[str, int] = {
    "Fearfully_Surprised": 14445, "Happily_Surprised": 24915, "Sadly_Surprised": 10780,
    "Disgustedly_Surprised": 10637, "Angrily_Surprised": 10535, "Sadly_Fearful": 10112, "Sadly_Angry": 8878,
    "Sadly_Disgusted": 10765, "Fearfully_Angry": 11591, "Fearfully_Disgusted": 10356,
    "Angrily_Disgusted": 9415, "Happily_Disgusted": 8885, "Other": 44456,
}


def compound_index(name: str) -> int:
    """Index of a compound in CEXPR_CLASSES from any spelling ('Sadly Fearful', 'sadly_fearful', ...)."""
    key = normalise_name(name)
    for i, candidate in enumerate(CEXPR_CLASSES):
        if normalise_name(candidate) == key:
            return i
    raise KeyError(f"unknown compound expression {name!r}; expected one of {', '.join(CEXPR_CLASSES)}")


def challenge_index(cexpr_index: int) -> int:
    """Challenge class (0..6) of a C-EXPR-DB class index, or -1 when it is not one of the 7."""
    return cexpr_index if 0 <= cexpr_index < len(CHALLENGE_COMPOUNDS) else -1


def normalise_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").replace("-", " ").split()).lower()


# --- valence-arousal ----------------------------------------------------------------------------------
# Expected (valence, arousal) ranges per expression, each ((low, high), (low, high)) within [-1, 1].
# Compounds and Other: C-EXPR-DB's Table 2 (Kollias 2023). Basic emotions and the other states are not in
# that table: ours, read off the compounds each emotion forms (every compound but the happily ones has
# V < 0 and A > 0), with sadness calm (A < 0), surprise of either sign, and neutral near the origin.
_NEGATIVE_AROUSED = ((-1.0, 0.0), (0.0, 1.0))
VA_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    **{name: _NEGATIVE_AROUSED for name in CEXPR_COMPOUNDS if not name.startswith("Happily")},
    "Happily_Surprised": ((0.0, 1.0), (0.0, 1.0)),
    "Happily_Disgusted": ((-1.0, 1.0), (0.0, 1.0)),
    "Other": ((-1.0, 1.0), (-1.0, 1.0)),
    "happiness": ((0.0, 1.0), (0.0, 1.0)),
    "surprise": ((-1.0, 1.0), (0.0, 1.0)),
    "fear": _NEGATIVE_AROUSED,
    "anger": _NEGATIVE_AROUSED,
    "disgust": _NEGATIVE_AROUSED,
    "sadness": ((-1.0, 0.0), (-1.0, 0.0)),
    "neutral": ((-0.2, 0.2), (-0.2, 0.2)),
    "contempt": ((-1.0, 0.0), (-1.0, 1.0)),
}
VA_RANGES["other"] = VA_RANGES["Other"]

# How strongly each basic emotion raises vocal arousal (loudness, pitch movement, speaking rate), from -1 calm
# to 1 agitated; a compound's is the mean of its pair's. Used only to give the synthetic voices the partial,
# class-shared cue real speech carries: anger, fear and surprise agitated, sadness subdued.
VOCAL_AROUSAL: dict[str, float] = {"anger": 0.8, "fear": 0.7, "surprise": 0.7, "happiness": 0.5,
                                   "disgust": 0.2, "sadness": -0.6, "neutral": 0.0, "contempt": 0.0}


def vocal_arousal(name: str) -> float:
    """Vocal arousal of a basic emotion, neutral, a compound (mean of its pair) or Other (0)."""
    kind = expression_kind(name)
    if kind == "compound":
        pair = COMPOUND_PAIRS[CEXPR_CLASSES[compound_index(name)]]
        return float(np.mean([VOCAL_AROUSAL[e] for e in pair]))
    return VOCAL_AROUSAL.get(normalise_name(name), 0.0)


# --- action units -----------------------------------------------------------------------------------
AFFWILD2_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
CEXPR_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 15, 17, 20, 23, 24, 25, 26)
AU_SETS: dict[str, tuple[int, ...]] = {"affwild2": AFFWILD2_AUS, "cexpr": CEXPR_AUS}
# Every sample table carries the 17-AU superset; the Aff-Wild2 set is a subset of it.
AU_COLUMNS: tuple[str, ...] = tuple(f"AU{n}" for n in CEXPR_AUS)
assert set(AFFWILD2_AUS) <= set(CEXPR_AUS)

# --- dataset label index maps (file value → our name) ----------------------------------------------
# Values are BASIC_EMOTIONS names, NON_BASIC_STATES names, or CEXPR_CLASSES names.
RAFDB_BASIC: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness",
                               6: "anger", 7: "neutral"}
RAFDB_COMPOUND: dict[int, str] = {
    1: "Happily_Surprised", 2: "Happily_Disgusted", 3: "Sadly_Fearful", 4: "Sadly_Angry",
    5: "Sadly_Surprised", 6: "Sadly_Disgusted", 7: "Fearfully_Angry", 8: "Fearfully_Surprised",
    9: "Angrily_Surprised", 10: "Angrily_Disgusted", 11: "Disgustedly_Surprised",
}
# AffectNet: 8 None, 9 Uncertain, 10 No-Face carry no usable expression and are dropped by the adapter.
AFFECTNET: dict[int, str] = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear",
                             5: "disgust", 6: "anger", 7: "contempt"}
AFFECTNET_UNUSABLE: dict[int, str] = {8: "None", 9: "Uncertain", 10: "No-Face"}
AFFWILD2_EXPR_HEADER: tuple[str, ...] = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness",
                                         "Surprise", "Other")
AFFWILD2_EXPR: dict[int, str] = {0: "neutral", 1: "anger", 2: "disgust", 3: "fear", 4: "happiness",
                                 5: "sadness", 6: "surprise", 7: "other"}
AFFWILD2_AU_HEADER: tuple[str, ...] = tuple(f"AU{n}" for n in AFFWILD2_AUS)
AFFWILD2_VA_HEADER: tuple[str, str] = ("valence", "arousal")
AFFWILD2_VA_INVALID: float = -5.0  # Aff-Wild2 VA files mark an unannotated frame with -5
AFFECTNET_VA_INVALID: float = -2.0  # AffectNet's valence/arousal columns use -2 for "none"
# C-EXPR-DB annotation CSVs name their columns with spaces ("Fearfully Surprised").
CEXPR_TIME_COLUMNS: tuple[str, str] = ("Begin Time - hh:mm:ss.ms", "End Time - hh:mm:ss.ms")
CEXPR_CSV_CLASS_COLUMNS: tuple[str, ...] = tuple(name.replace("_", " ") for name in CEXPR_CLASSES)


def expression_kind(name: str) -> str:
    """'basic', 'compound' or 'non_basic' for any name the maps above produce (any spelling)."""
    key = normalise_name(name)
    if key in {normalise_name(n) for n in BASIC_EMOTIONS}:
        return "basic"
    if key in {normalise_name(n) for n in NON_BASIC_STATES}:
        return "non_basic"
    compound_index(name)  # raises a clear KeyError when unknown
    return "compound"


def multilabel_target(name: str) -> np.ndarray:
    """The 6-way multi-label target of an expression name: one-hot basic, two-hot compound, zeros otherwise."""
    target = np.zeros(len(BASIC_EMOTIONS), dtype=np.float32)
    kind = expression_kind(name)
    if kind == "basic":
        target[BASIC_INDEX[normalise_name(name)]] = 1.0
    elif kind == "compound":
        for emotion in COMPOUND_PAIRS[CEXPR_CLASSES[compound_index(name)]]:
            target[BASIC_INDEX[emotion]] = 1.0
    return target


# --- emotion→AU prior (Du et al. 2014 as tabulated in FaceBehaviorNet) ------------------------------
# Prototypical AUs have weight 1; observational AUs carry the fraction of annotators who observed them.
EMOTION_AU_PRIOR: dict[str, dict[int, float]] = {
    "happiness": {12: 1.0, 25: 1.0, 6: 0.51},
    "sadness": {4: 1.0, 15: 1.0, 1: 0.6, 6: 0.5, 11: 0.26, 17: 0.67},
    "fear": {1: 1.0, 4: 1.0, 20: 1.0, 25: 1.0, 2: 0.57, 5: 0.63, 26: 0.33},
    "anger": {4: 1.0, 7: 1.0, 24: 1.0, 10: 0.26, 17: 0.52, 23: 0.29},
    "surprise": {1: 1.0, 2: 1.0, 25: 1.0, 26: 1.0, 5: 0.66},
    "disgust": {9: 1.0, 10: 1.0, 17: 1.0, 4: 0.31, 24: 0.26},
}


def prototypical_aus(emotion: str) -> tuple[int, ...]:
    return tuple(au for au, w in EMOTION_AU_PRIOR[emotion].items() if w == 1.0)


def observational_aus(emotion: str) -> dict[int, float]:
    return {au: w for au, w in EMOTION_AU_PRIOR[emotion].items() if w < 1.0}


_OBSERVATIONAL_MODES = ("weighted", "ones", "none")


def _prior_weight(weight: float, observational: str) -> float:
    """A prior weight under an observational mode: prototypical (1) stays; observational is kept, 1 or 0."""
    if observational not in _OBSERVATIONAL_MODES:
        raise OptionError(f"observational must be one of {_OBSERVATIONAL_MODES}, got {observational!r}")
    if weight >= 1.0:
        return 1.0
    return {"weighted": weight, "ones": 1.0, "none": 0.0}[observational]


def emotion_au_prior(au_set: str = "cexpr", observational: str = "weighted") -> np.ndarray:
    """Prior matrix P[emotion, au] over BASIC_EMOTIONS × the AU set ('cexpr' 17 or 'affwild2' 12).

    observational='weighted' keeps each observational AU's weight; 'ones' sets it to 1 (as C-EXPR-NET's
    distribution matching does); 'none' keeps prototypical AUs only.
    """
    if au_set not in AU_SETS:
        raise ValueError(f"au_set must be one of {sorted(AU_SETS)}, got {au_set!r}")
    aus = AU_SETS[au_set]
    prior = np.zeros((len(BASIC_EMOTIONS), len(aus)), dtype=np.float32)
    for e, emotion in enumerate(BASIC_EMOTIONS):
        for au, weight in EMOTION_AU_PRIOR[emotion].items():
            if au in aus:
                prior[e, aus.index(au)] = _prior_weight(weight, observational)
    return prior


def expression_aus(name: str, observational: str = "weighted") -> dict[int, float]:
    """AU activations of an expression: a basic emotion's prior, or the union (max) of a compound's pair."""
    kind = expression_kind(name)
    if kind == "basic":
        emotions: tuple[str, ...] = (normalise_name(name),)
    elif kind == "compound":
        emotions = COMPOUND_PAIRS[CEXPR_CLASSES[compound_index(name)]]
    else:
        return {}
    out: dict[int, float] = {}
    for emotion in emotions:
        for au, weight in EMOTION_AU_PRIOR[emotion].items():
            weight = _prior_weight(weight, observational)
            if weight > 0:
                out[au] = max(out.get(au, 0.0), weight)
    return out
