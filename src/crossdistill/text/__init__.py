"""Text utilities: the word-level tokenizer used by text-modality data modules."""

from crossdistill.text.tokenizer import HuggingFaceTokenizer, WordTokenizer

__all__ = ["HuggingFaceTokenizer", "WordTokenizer"]
