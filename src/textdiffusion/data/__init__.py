"""Corpora (resolve, verify, split), tokenizers and batching."""

from textdiffusion.data.batches import TextData
from textdiffusion.data.corpus import DataError, load_corpus
from textdiffusion.data.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    make_tokenizer,
)

__all__ = ["BPETokenizer", "CharTokenizer", "DataError", "TextData", "Tokenizer", "WordPieceTokenizer", "load_corpus",
           "load_tokenizer", "make_tokenizer"]
