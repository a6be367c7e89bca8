"""C-EXPR-NET parts: AU descriptions and tokenizer, semantic encoder, eq. 2 attention, KL and DM losses."""
import numpy as np
import pytest
import torch

from abaw_ce import labels
from abaw_ce.cexprnet.modules import au_from_expressions, distribution_matching_loss, expression_kl_loss, kl_targets
from abaw_ce.models.au_text import au_descriptions, encode, load_tokenizer, train_tokenizer
from abaw_ce.models.cexprnet import AUSemanticEncoder, CrossModalityAUHead, cross_modality_attention


def test_every_au_has_a_description_of_several_sentences():
    descriptions = au_descriptions()
    assert tuple(descriptions) == labels.CEXPR_AUS
    assert all(len(sentences) >= 3 for sentences in descriptions.values())
    assert len({s for sentences in descriptions.values() for s in sentences}) == sum(
        len(s) for s in descriptions.values())  # no sentence copied between AUs


def test_tokenizer_trains_offline_round_trips_and_encodes(tmp_path):
    tokenizer = train_tokenizer(vocab_size=300)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(tmp_path / "tokenizer.json")
    sentence = au_descriptions()[12][1]
    ids = again.encode(sentence, add_special_tokens=False).ids
    assert ids == tokenizer.encode(sentence, add_special_tokens=False).ids
    assert again.decode(ids) == sentence.lower()
    assert again.token_to_id("[UNK]") not in ids
    encoded = encode(again, max_tokens=80)
    assert encoded.ids.shape == (17, 80) and encoded.mask.sum(1).min() > 20
    assert (encoded.ids[:, 0] == again.token_to_id("[CLS]")).all()
    assert encoded.segments.max() == 3  # four sentences per description -> segments 0..3
    cut = encode(again, max_tokens=16)
    assert cut.mask.all() and cut.ids.shape == (17, 16)


def test_attention_is_non_negative_and_sums_to_one_over_locations():
    torch.manual_seed(0)
    features, embeddings = torch.randn(3, 49, 32), torch.randn(17, 32)
    attention = cross_modality_attention(features, embeddings)
    assert attention.shape == (3, 17, 49) and (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 17))
    # eq. 2 by hand for one AU and image
    cos = torch.nn.functional.cosine_similarity(features[1], embeddings[4][None], dim=-1)
    torch.testing.assert_close(attention[1, 4], cos.clamp(min=0) / cos.clamp(min=0).sum())
    # no positive cosine anywhere: uniform, not NaN
    flat = cross_modality_attention(-embeddings[:1].expand(1, 5, 32).clone(), embeddings[:1])
    torch.testing.assert_close(flat, torch.full((1, 1, 5), 0.2))


def test_au_branch_shapes_and_gradients():
    tokenizer = train_tokenizer(vocab_size=300)
    encoded = encode(tokenizer)
    encoder = AUSemanticEncoder(tokenizer.get_vocab_size(), dim=32, heads=2, intra_layers=1, inter_layers=1)
    head = CrossModalityAUHead(feature_dim=24, text_dim=32)
    embeddings = encoder(*(torch.as_tensor(a) for a in (encoded.ids, encoded.segments, encoded.mask)))
    assert embeddings.shape == (17, 32)
    logits, attention = head(torch.randn(2, 24, 4, 4), embeddings)
    assert logits.shape == (2, 17) and attention.shape == (2, 17, 16)
    logits.sum().backward()
    assert encoder.word.weight.grad is not None and encoder.word.weight.grad.abs().sum() > 0


def test_kl_targets_for_basic_and_compound_labels():
    targets = kl_targets(["happiness", "Sadly_Angry", "Happily Surprised"])
    idx = labels.BASIC_INDEX
    assert targets[0, idx["happiness"]] == 1 and targets[0].sum() == 1
    assert targets[1, idx["sadness"]] == targets[1, idx["anger"]] == 0.5 and targets[1].sum() == 1
    assert targets[2, idx["happiness"]] == targets[2, idx["surprise"]] == 0.5
    with pytest.raises(ValueError, match="neutral"):
        kl_targets(["neutral"])
    y = torch.as_tensor(targets[1:2])
    perfect = torch.log(y.clamp(min=1e-9))
    assert expression_kl_loss(perfect, y).item() < 1e-6
    uniform = torch.zeros(1, 6)
    assert expression_kl_loss(uniform, y).item() == pytest.approx(np.log(6) - np.log(2), abs=1e-5)


def test_distribution_matching_against_a_hand_computed_example():
    prior = labels.emotion_au_prior("cexpr", observational="ones")
    p_expr = torch.zeros(1, 6)
    p_expr[0, labels.BASIC_INDEX["happiness"]] = 0.5
    p_expr[0, labels.BASIC_INDEX["sadness"]] = 0.5
    q = au_from_expressions(p_expr, prior)[0]
    au = labels.CEXPR_AUS.index
    # happiness: 12, 25, 6; sadness: 4, 15, 1, 6, 11, 17 (observational counted as 1 here)
    assert q[au(6)] == pytest.approx(1.0) and q[au(12)] == pytest.approx(0.5) and q[au(4)] == pytest.approx(0.5)
    assert q[au(9)] == 0 and q[au(26)] == 0
    weighted = au_from_expressions(p_expr, labels.emotion_au_prior("cexpr"))[0]
    assert weighted[au(6)] == pytest.approx(0.5 * 0.51 + 0.5 * 0.5)
    p_au = torch.full((1, 17), 0.5)
    clipped = np.clip(q.numpy(), np.float32(1e-6), np.float32(1 - 1e-6)).astype(np.float64)  # as in float32
    expected = -np.mean(0.5 * np.log(clipped) + 0.5 * np.log(1 - clipped))
    assert distribution_matching_loss(p_au, q[None]).item() == pytest.approx(expected, rel=1e-5)


def test_tokenizer_is_the_same_in_every_process(tmp_path):
    # The vocabulary must not depend on hash order: a fresh interpreter builds the same one.
    import subprocess
    import sys

    code = ("from abaw_ce.models.au_text import train_tokenizer; import json; "
            "print(json.dumps(sorted(train_tokenizer(vocab_size=150).get_vocab().items())))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0].strip() == json_vocab(train_tokenizer(vocab_size=150))


def json_vocab(tokenizer):
    import json

    return json.dumps(sorted(tokenizer.get_vocab().items()))
