"""Corpora (resolve, verify, split), tokenizers and batching."""

from textdiffusion.data.batches import TextData
from textdiffusion.data.corpus import DataError, load_corpus
from textdiffusion.data.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

__all__ = ["CharTokenizer", "DataError", "TextData", "Tokenizer", "load_corpus", "load_tokenizer"]
