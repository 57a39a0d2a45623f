"""Word tokenizer and text encoders."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from crossdistill.models.taps import FeatureRecorder
from crossdistill.models.text import (
    EmbeddingBagEncoder,
    HuggingFaceTextEncoder,
    TextTransformerEncoder,
)
from crossdistill.text import WordTokenizer

CORPUS = [
    "A red star in the top left corner.",
    "a small red thing",
    "A blue circle, on a busy background!",
    "there is a large star",
    "a photo of a circle",
]


# ------------------------------------------------------------------- tokenizer
def test_tokenizer_fit_encode_decode_roundtrip(tmp_path):
    tok = WordTokenizer(min_freq=1).fit(CORPUS)
    assert tok.itos[:2] == ["<pad>", "<unk>"] and tok.itos[2] == "a"  # most frequent word
    assert tok.tokenize("A Red-Star, isn't it?") == ["a", "red", "star", "isn't", "it"]
    ids, mask = tok.encode("a red star on a zebra", max_len=8)
    assert ids.dtype == torch.int64 and ids.shape == (8,)
    assert mask.tolist() == [1] * 6 + [0] * 2 and ids[6:].tolist() == [0, 0]
    assert ids[5].item() == tok.unk_id
    assert tok.decode(ids) == "a red star on a <unk>"
    assert tok.decode(tok.encode("a photo of a circle")[0]) == "a photo of a circle"
    short, m = tok.encode("a red star in the top left corner", max_len=3)
    assert tok.decode(short) == "a red star" and m.tolist() == [1, 1, 1]

    path = tok.save(tmp_path / "sub" / "tok.json")
    loaded = WordTokenizer.load(path)
    assert loaded.itos == tok.itos and loaded.vocab_size == tok.vocab_size
    for text in CORPUS:
        assert torch.equal(loaded.encode(text, 12)[0], tok.encode(text, 12)[0])
    batch, bmask = loaded.encode_batch(CORPUS, 6)
    assert batch.shape == (5, 6) and bmask.sum().item() == (batch != 0).sum().item()


def test_tokenizer_min_freq_max_size_specials():
    tok = WordTokenizer(min_freq=2).fit(CORPUS)
    assert "red" in tok.stoi and "zebra" not in tok.stoi and "busy" not in tok.stoi
    assert tok.in_vocab_fraction("a busy red") == pytest.approx(2 / 3)
    assert tok.in_vocab_fraction("") == 0.0
    small = WordTokenizer(max_size=5).fit(CORPUS)
    assert small.vocab_size == 5
    be = WordTokenizer(add_bos=True, add_eos=True).fit(CORPUS)
    assert be.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    ids, _ = be.encode("a red star in the corner", max_len=4)
    assert ids[0].item() == be.bos_id and ids[-1].item() == be.eos_id  # eos kept on truncation
    assert be.decode(ids) == "a red"
    assert WordTokenizer.from_dict(be.to_dict()).encode("a red", 5)[0].tolist() == [
        2,
        be.stoi["a"],
        be.stoi["red"],
        3,
        0,
    ]


def test_tokenizer_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer(min_freq=0)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        WordTokenizer.load(bad)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        WordTokenizer.load(tmp_path / "none.json")
    with pytest.raises(ValueError, match="out of range"):
        WordTokenizer().fit(CORPUS).decode([10_000])


# -------------------------------------------------------------------- encoders
def test_text_transformer_encoder_shapes_and_padding():
    torch.manual_seed(0)
    enc = TextTransformerEncoder(vocab_size=30, d_model=32, nhead=4, num_layers=2, max_len=16)
    enc.eval()
    assert enc.embedding_dim == 32
    x = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    taps = {"layer0": "encoder.layers.0", "tokens": {"path": "encoder", "channels_last": True}}
    with FeatureRecorder(enc, taps).recording() as f:
        emb = enc(x)
    assert emb.shape == (3, 32) and f["layer0"].shape == (3, 6, 32)  # [B, L, d_model]
    assert f["tokens"].shape == (3, 32, 6)  # channels_last -> [B, d_model, L]
    assert torch.isfinite(emb).all() and emb[2].abs().sum() == 0  # all-padding row -> zeros
    # the embedding is the masked mean of the tapped final token states
    torch.testing.assert_close(emb[0], f["tokens"][0, :, :3].mean(1))
    # extra padding does not change the embedding
    more_pad = torch.cat([x, torch.zeros(3, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(enc(more_pad), emb, atol=1e-5, rtol=1e-5)
    proj = TextTransformerEncoder(vocab_size=30, d_model=32, out_dim=12)
    assert proj(x).shape == (3, 12) and proj.embedding_dim == 12
    with pytest.raises(ValueError, match="exceeds the encoder's max_len=16"):
        enc(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 30\)"):
        enc(torch.tensor([[1, 30]]))


def test_embedding_bag_encoder_ignores_padding():
    enc = EmbeddingBagEncoder(vocab_size=20, embedding_dim=8)
    assert enc.embedding_dim == 8
    a = enc(torch.tensor([[3, 4, 0, 0]]))
    b = enc(torch.tensor([[3, 4]]))
    w = enc.bag.weight
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], (w[3] + w[4]) / 2)


def test_text_transformer_learns_keyword_task():
    """A few dozen steps separate captions by their class word (sanity of gradients)."""
    torch.manual_seed(0)
    words = ["circle", "square", "star"]
    fillers = ["a", "red", "small", "thing", "on", "the", "left", "busy", "background"]
    tok = WordTokenizer().fit(words + fillers)
    g = torch.Generator().manual_seed(0)
    texts, labels = [], []
    for i in range(96):
        f = [fillers[j] for j in torch.randint(len(fillers), (5,), generator=g)]
        f.insert(int(torch.randint(6, (1,), generator=g)), words[i % 3])
        texts.append(" ".join(f))
        labels.append(i % 3)
    x, _ = tok.encode_batch(texts, 8)
    y = torch.tensor(labels)
    enc = TextTransformerEncoder(
        tok.vocab_size, d_model=32, dim_feedforward=64, dropout=0.0, max_len=8
    )
    head = torch.nn.Linear(enc.embedding_dim, 3)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(enc(x)), y)
        loss.backward()
        opt.step()
    assert (head(enc(x)).argmax(1) == y).float().mean() > 0.95


def test_huggingface_encoder_is_optional():
    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers installed; loading a model would need local weights")
    with pytest.raises(ImportError, match="optional 'transformers' package"):
        HuggingFaceTextEncoder("/nonexistent/model")
