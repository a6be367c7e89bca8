import numpy as np
import pytest

from abaw_ce import labels


def test_orders_match_design():
    assert labels.BASIC_EMOTIONS == ("surprise", "fear", "disgust", "happiness", "sadness", "anger")
    assert labels.CHALLENGE_COMPOUNDS[0] == "Fearfully_Surprised"
    assert labels.CHALLENGE_COMPOUNDS[-1] == "Sadly_Angry"
    assert len(labels.CEXPR_CLASSES) == 13 and labels.CEXPR_CLASSES[-1] == "Other"
    assert labels.CEXPR_CLASSES[:7] == labels.CHALLENGE_COMPOUNDS
    assert len(labels.AFFWILD2_AUS) == 12 and len(labels.CEXPR_AUS) == 17


def test_every_compound_name_spells_its_pair():
    # The adverb of each half of the name must be the emotion the pair lists: catches a swapped pair.
    adverb = {"Surprised": "surprise", "Fearfully": "fear", "Fearful": "fear", "Disgustedly": "disgust",
              "Disgusted": "disgust", "Happily": "happiness", "Sadly": "sadness", "Angrily": "anger",
              "Angry": "anger"}
    for name, pair in zip(labels.CEXPR_COMPOUNDS, labels.CEXPR_PAIRS):
        first, second = name.split("_")
        assert {adverb[first], adverb[second]} == set(pair), name
    assert labels.CHALLENGE_PAIR_INDEX.tolist()[0] == [1, 0]  # fear, surprise


def test_dataset_maps_cover_design():
    assert labels.RAFDB_BASIC[1] == "surprise" and labels.RAFDB_BASIC[7] == "neutral"
    assert labels.RAFDB_COMPOUND[8] == "Fearfully_Surprised" and len(labels.RAFDB_COMPOUND) == 11
    assert labels.AFFECTNET[3] == "surprise" and labels.AFFECTNET[7] == "contempt"
    assert labels.AFFWILD2_EXPR[1] == "anger" and labels.AFFWILD2_EXPR[7] == "other"
    for name in list(labels.RAFDB_COMPOUND.values()):
        assert labels.expression_kind(name) == "compound"


def test_multilabel_targets():
    assert labels.multilabel_target("happiness").tolist() == [0, 0, 0, 1, 0, 0]
    assert labels.multilabel_target("Sadly Angry").tolist() == [0, 0, 0, 0, 1, 1]
    assert labels.multilabel_target("neutral").sum() == 0
    with pytest.raises(KeyError, match="unknown compound"):
        labels.multilabel_target("gleeful")


def test_prior_matrices():
    w = labels.emotion_au_prior("cexpr", "weighted")
    assert w.shape == (6, 17)
    col = labels.CEXPR_AUS.index
    assert w[labels.BASIC_INDEX["happiness"], col(12)] == 1.0
    assert w[labels.BASIC_INDEX["happiness"], col(6)] == pytest.approx(0.51)
    assert w[labels.BASIC_INDEX["sadness"], col(17)] == pytest.approx(0.67)
    assert w[labels.BASIC_INDEX["disgust"], col(9)] == 1.0
    ones = labels.emotion_au_prior("cexpr", "ones")
    assert set(np.unique(ones)) == {0.0, 1.0}
    assert ((ones > 0) == (w > 0)).all()
    proto = labels.emotion_au_prior("cexpr", "none")
    assert proto.sum() == sum(len(labels.prototypical_aus(e)) for e in labels.BASIC_EMOTIONS)
    aw = labels.emotion_au_prior("affwild2")
    assert aw.shape == (6, 12)
    # AU9 (disgust) is not in the Aff-Wild2 set: the 12-AU matrix is the 17-AU one restricted to its columns.
    assert np.array_equal(aw, w[:, [col(a) for a in labels.AFFWILD2_AUS]])
    with pytest.raises(ValueError):
        labels.emotion_au_prior("cexpr", "sometimes")


def test_compound_aus_are_union_of_pair():
    aus = labels.expression_aus("Happily_Surprised")
    assert aus[12] == 1.0 and aus[2] == 1.0 and aus[5] == pytest.approx(0.66)
    assert labels.expression_aus("neutral") == {}


def test_challenge_classes_of_multilabel_rows():
    rows = np.stack([labels.multilabel_target(n) for n in ("Sadly_Angry", "happiness", "Happily_Disgusted",
                                                       "Fearfully_Surprised", "neutral")])
    assert labels.challenge_classes(rows).tolist() == [6, -1, -1, 0, -1]
