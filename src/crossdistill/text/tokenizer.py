"""Word-level tokenizer fitted on the training captions.

Text is lowercased and split by a regex into words (letters/digits, with an optional
``'s``-style suffix); punctuation is dropped unless ``keep_punctuation``. Id 0 is always
``<pad>`` and id 1 ``<unk>``; ``<bos>`` / ``<eos>`` are reserved (ids 2 / 3) only when
enabled. The vocabulary is ordered by decreasing frequency, ties alphabetically, so fitting
is deterministic.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_WORD_PUNCT_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
FORMAT_VERSION = 1


class WordTokenizer:
    """Lowercase regex word tokenizer with a frequency-cut vocabulary.

    Args:
        min_freq: minimum count in the fitting corpus for a word to enter the vocabulary.
        max_size: maximum vocabulary size *including* special tokens (None = unlimited).
        add_bos: prepend ``<bos>`` when encoding; add_eos: append ``<eos>``.
        keep_punctuation: keep punctuation characters as tokens.
    """

    pad_id = 0
    unk_id = 1

    def __init__(
        self,
        min_freq: int = 1,
        max_size: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        keep_punctuation: bool = False,
    ) -> None:
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        self.min_freq = int(min_freq)
        self.max_size = None if max_size is None else int(max_size)
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.keep_punctuation = bool(keep_punctuation)
        self.itos: list[str] = self.specials()
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if self.max_size is not None and self.max_size < len(self.itos):
            raise ValueError(
                f"max_size={self.max_size} is smaller than the {len(self.itos)} special tokens"
            )
        self.fitted = False

    # ----------------------------------------------------------------- vocabulary
    def specials(self) -> list[str]:
        """Special tokens in id order (``<pad>``=0, ``<unk>``=1, then optional bos/eos)."""
        out = [PAD, UNK]
        if self.add_bos or self.add_eos:
            out += [BOS, EOS]
        return out

    @property
    def bos_id(self) -> int | None:
        return self.stoi.get(BOS)

    @property
    def eos_id(self) -> int | None:
        return self.stoi.get(EOS)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        """Lowercase and split ``text`` into word (and optionally punctuation) tokens."""
        pattern = _WORD_PUNCT_RE if self.keep_punctuation else _WORD_RE
        return pattern.findall(str(text).lower())

    def fit(self, texts: Iterable[str]) -> WordTokenizer:
        """Build the vocabulary from ``texts`` (replaces any previous vocabulary)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(self.tokenize(text))
        specials = self.specials()
        words = [w for w, c in counts.items() if c >= self.min_freq and w not in specials]
        words.sort(key=lambda w: (-counts[w], w))
        if self.max_size is not None:
            words = words[: self.max_size - len(specials)]
        self.itos = specials + words
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.fitted = True
        return self

    # ------------------------------------------------------------- encode/decode
    def token_ids(self, text: str) -> list[int]:
        """Unpadded, untruncated ids (with bos/eos if enabled)."""
        ids = [self.stoi.get(t, self.unk_id) for t in self.tokenize(text)]
        if self.add_bos:
            ids = [self.stoi[BOS], *ids]
        if self.add_eos:
            ids = [*ids, self.stoi[EOS]]
        return ids

    def encode(self, text: str, max_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode one text to ``(ids, attention_mask)``, int64 tensors of length ``max_len``.

        Longer sequences are truncated (keeping ``<eos>`` last if enabled); shorter ones are
        right-padded with ``<pad>`` (0). ``max_len=None`` gives the natural length.
        """
        ids = self.token_ids(text)
        if max_len is not None:
            if max_len < 1:
                raise ValueError(f"max_len must be >= 1, got {max_len}")
            if len(ids) > max_len:
                ids = ids[:max_len]
                if self.add_eos:
                    ids[-1] = self.stoi[EOS]
            ids = ids + [self.pad_id] * (max_len - len(ids))
        out = torch.tensor(ids, dtype=torch.long)
        return out, (out != self.pad_id).long()

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
        """Encode many texts to ``[B, max_len]`` ids and attention mask."""
        if len(texts) == 0:
            empty = torch.zeros(0, max_len, dtype=torch.long)
            return empty, empty.clone()
        pairs = [self.encode(t, max_len) for t in texts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """Map ids back to a space-joined string (``<unk>`` kept, pad/bos/eos skipped)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        skip = {self.pad_id, self.bos_id, self.eos_id} if skip_special else set()
        words = []
        for i in ids:
            if not 0 <= int(i) < len(self.itos):
                raise ValueError(f"token id {i} out of range [0, {len(self.itos)})")
            if int(i) not in skip:
                words.append(self.itos[int(i)])
        return " ".join(words)

    def in_vocab_fraction(self, text: str) -> float:
        """Fraction of the text's word tokens that are in the vocabulary (0.0 if no words)."""
        toks = self.tokenize(text)
        if not toks:
            return 0.0
        return sum(t in self.stoi for t in toks) / len(toks)

    # ----------------------------------------------------------------- save/load
    def to_dict(self) -> dict:
        return {
            "type": "WordTokenizer",
            "format_version": FORMAT_VERSION,
            "min_freq": self.min_freq,
            "max_size": self.max_size,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "keep_punctuation": self.keep_punctuation,
            "itos": list(self.itos),
        }

    @classmethod
    def from_dict(cls, state: dict) -> WordTokenizer:
        if state.get("type") != "WordTokenizer" or "itos" not in state:
            raise ValueError(
                "not a WordTokenizer state: expected keys 'type'='WordTokenizer' and 'itos', "
                f"got keys {sorted(state)}"
            )
        tok = cls(
            min_freq=state.get("min_freq", 1),
            max_size=state.get("max_size"),
            add_bos=state.get("add_bos", False),
            add_eos=state.get("add_eos", False),
            keep_punctuation=state.get("keep_punctuation", False),
        )
        itos = list(state["itos"])
        if itos[: len(tok.specials())] != tok.specials():
            raise ValueError(
                f"tokenizer vocabulary must start with {tok.specials()}, got {itos[:4]}"
            )
        tok.itos = itos
        tok.stoi = {t: i for i, t in enumerate(itos)}
        tok.fitted = True
        return tok

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON (parent directories are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique per process
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"tokenizer file {path} is not valid JSON: {e}") from None
        return cls.from_dict(state)


class HuggingFaceTokenizer:
    """Optional adapter with the :class:`WordTokenizer` encode interface around a HF tokenizer.

    Needs the ``transformers`` extra; loads only local files unless ``local_files_only``
    is False. Its pad id is the HF tokenizer's pad id (which may differ from 0).
    """

    def __init__(self, name_or_path: str, local_files_only: bool = True) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover - optional extra
            raise ImportError(
                "HuggingFaceTokenizer needs the optional 'transformers' package "
                "(pip install transformers); the built-in WordTokenizer needs nothing."
            ) from e
        self.name_or_path = name_or_path
        self.hf = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        if self.hf.pad_token_id is None:
            self.hf.pad_token = self.hf.eos_token or self.hf.unk_token
        self.pad_id = int(self.hf.pad_token_id)
        self.fitted = True

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def fit(self, texts: Iterable[str]) -> HuggingFaceTokenizer:
        return self  # pretrained vocabulary

    def encode(self, text: str, max_len: int | None = None) -> tuple[Tensor, Tensor]:
        enc = self.hf(
            text,
            max_length=max_len,
            truncation=max_len is not None,
            padding="max_length" if max_len is not None else False,
            return_tensors="pt",
        )
        return enc["input_ids"][0].long(), enc["attention_mask"][0].long()

    def in_vocab_fraction(self, text: str) -> float:
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        unk = self.hf.unk_token_id
        return 0.0 if not ids else sum(i != unk for i in ids) / len(ids)

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special)
