"""Text encoders: token ids ``[B, L]`` (0 = ``<pad>``) -> embedding ``[B, D]``.

``TextTransformerEncoder`` (small transformer, masked mean pooling) and
``EmbeddingBagEncoder`` (mean of word embeddings) are self-contained. The optional
``HuggingFaceTextEncoder`` wraps a pretrained ``transformers`` model loaded from a local
path (an extra; never needed by the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_ids(x: Tensor, vocab_size: int) -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"expected token ids of shape [B, L], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"expected integer token ids, got dtype {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}) (vocab_size), got range "
            f"[{int(x.min())}, {int(x.max())}]; was the encoder built with the tokenizer's "
            "vocab_size?"
        )
    return x.long()


def masked_mean(features: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``features [B, L, D]`` over positions where ``mask [B, L]`` is true.

    Rows without any valid position give a zero vector.
    """
    m = mask.unsqueeze(-1).to(features.dtype)
    return (features * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextTransformerEncoder(nn.Module):
    """Token embedding + learned positions + ``nn.TransformerEncoder`` + masked mean pool.

    Args:
        vocab_size: tokenizer vocabulary size (id ``pad_id`` is padding).
        d_model: width; ``embedding_dim`` equals ``d_model`` unless ``out_dim`` is set.
        nhead, num_layers, dim_feedforward, dropout: transformer hyper-parameters.
        max_len: number of learned positions (inputs longer than this are rejected).
        out_dim: optional final linear projection size.
        pad_id: padding token id (masked in attention and pooling).

    Token maps ``[B, L, d_model]`` are tapped by module path (``crossdistill.models.taps``),
    e.g. ``encoder.layers.<i>`` or ``encoder`` (after the final norm); with
    ``channels_last: true`` they become ``[B, d_model, L]``. Padded positions are included.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        max_len: int = 128,
        out_dim: int | None = None,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)
        self.pad_id = int(pad_id)
        self.token_emb = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.pos_emb = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.proj = nn.Linear(d_model, out_dim) if out_dim else nn.Identity()
        self.embedding_dim = int(out_dim or d_model)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.token_emb.weight[pad_id].zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = _check_ids(x, self.vocab_size)
        B, L = x.shape
        if self.max_len < L:
            raise ValueError(
                f"sequence length {L} exceeds the encoder's max_len={self.max_len}; "
                "raise teacher max_len or lower the data max_len"
            )
        valid = x != self.pad_id
        # an all-padding row would make attention NaN: let it attend to position 0
        attn_valid = valid.clone()
        attn_valid[:, 0] |= ~valid.any(1)
        pos = torch.arange(L, device=x.device)
        h = self.token_emb(x) + self.pos_emb(pos)[None]
        h = self.encoder(h, src_key_padding_mask=~attn_valid)
        return self.proj(masked_mean(h, valid))


class EmbeddingBagEncoder(nn.Module):
    """Bag of words: ``nn.EmbeddingBag`` mean (or sum/max) of the non-pad token embeddings.

    Args:
        vocab_size: tokenizer vocabulary size; embedding_dim: output size;
        mode: 'mean' | 'sum' | 'max'; pad_id: ignored token id.
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int = 64, mode: str = "mean", pad_id: int = 0
    ) -> None:
        super().__init__()
        if mode not in ("mean", "sum", "max"):
            raise ValueError(f"mode must be 'mean', 'sum' or 'max', got {mode!r}")
        self.vocab_size = int(vocab_size)
        self.pad_id = int(pad_id)
        self.embedding_dim = int(embedding_dim)
        self.bag = nn.EmbeddingBag(vocab_size, embedding_dim, mode=mode, padding_idx=pad_id)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_ids(x, self.vocab_size)
        return self.bag(x)


class HuggingFaceTextEncoder(nn.Module):
    """Pretrained ``transformers`` encoder (optional extra), masked mean pooled.

    ``forward`` takes the HF tokenizer's input ids ``[B, L]`` (see
    ``crossdistill.text.HuggingFaceTokenizer``; padding is that tokenizer's pad id) or a
    list of strings, which are tokenized here.

    Args:
        name_or_path: local directory (or hub name if ``local_files_only=False``).
        trainable: fine-tune the weights (default frozen).
        max_len: truncation length when strings are passed.
    """

    def __init__(
        self,
        name_or_path: str,
        trainable: bool = False,
        local_files_only: bool = True,
        max_len: int = 64,
    ) -> None:
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - optional extra
            raise ImportError(
                "HuggingFaceTextEncoder needs the optional 'transformers' package "
                "(pip install transformers) and a locally available model; use "
                "TextTransformerEncoder or EmbeddingBagEncoder otherwise."
            ) from e
        self.model = AutoModel.from_pretrained(name_or_path, local_files_only=local_files_only)
        self.tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, local_files_only=local_files_only
        )
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.max_len = int(max_len)
        self.embedding_dim = int(self.model.config.hidden_size)
        self.trainable = bool(trainable)
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> HuggingFaceTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(self, x: Tensor | list[str]) -> Tensor:
        if isinstance(x, (list, tuple)):
            enc = self.tokenizer(
                list(x),
                padding=True,
                truncation=True,
                max_length=self.max_len,
                return_tensors="pt",
            ).to(next(self.model.parameters()).device)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids = x.long()
            mask = (ids != self.pad_id).long()
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return masked_mean(out, mask.bool())
