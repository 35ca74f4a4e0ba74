from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textdiffusion.data import CharTokenizer, DataError, TextData, load_corpus
from textdiffusion.data import corpus as corpus_mod
from textdiffusion.data.tokenizer import load_tokenizer


def test_named_corpus_resolves_from_data_dir_and_is_canonical(shakespeare):
    text, source = load_corpus("tinyshakespeare")
    assert len(text) == 1_115_394
    assert source.endswith("tinyshakespeare.txt")


def test_named_corpus_with_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare", encoding="utf-8")
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    with pytest.raises(DataError, match="not the canonical"):
        load_corpus("tinyshakespeare")


def test_offline_download_failure_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path / "empty"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="TEXTDIFFUSION_DATA") as e:
        load_corpus("tinyshakespeare")
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such corpus"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_empty_corpus(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(p))


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus(str(p))


def test_directory_of_txt_files(tmp_path):
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "c.md").write_text("ignored", encoding="utf-8")
    text, source = load_corpus(str(tmp_path))
    assert text == "first\nsecond" and "2 .txt files" in source


def test_directory_without_txt(tmp_path):
    with pytest.raises(DataError, match=r"no \.txt files"):
        load_corpus(str(tmp_path))


def test_context_longer_than_corpus():
    data = TextData.from_text("short text, too short")
    with pytest.raises(DataError, match="smaller context"):
        data.check_window(64)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_tokenizer_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids
    # specials sit after every corpus symbol, so encoding text can never produce one
    assert max(ids) < tok.n_symbols <= min(tok.mask_id, tok.pad_id, tok.bos_id)
    assert len({tok.mask_id, tok.pad_id, tok.bos_id}) == 3


def test_tokenizer_unknown_character_message():
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(DataError, match=r"'é' \(U\+00E9"):
        tok.encode("héllo")
    with pytest.raises(DataError, match="never seen"):
        tok.encode_array("héllo")


def test_tokenizer_saves_and_loads(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be\n")
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.to_dict() == tok.to_dict() and again.mask_id == tok.mask_id


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="corrupt"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_split_is_first_90_percent_train(shakespeare):
    data = TextData.from_text(shakespeare)
    assert data.train_ids.numel() == int(len(shakespeare) * 0.9)
    assert data.train_ids.numel() + data.val_ids.numel() == len(shakespeare)
    assert data.tokenizer.decode(data.val_ids[:50].tolist()) == shakespeare[int(len(shakespeare) * 0.9):][:50]


def test_random_windows_are_real_crops():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    data = TextData.from_text(text)
    g = torch.Generator().manual_seed(0)
    x = TextData.random_windows(data.train_ids, 16, 10, g)
    assert x.shape == (16, 10)
    # consecutive characters of the alphabet, i.e. contiguous crops of the corpus
    diffs = (x[:, 1:] - x[:, :-1]) % 26
    assert bool((diffs == 1).all())


def test_tiled_windows_cover_split_without_overlap():
    ids = torch.arange(105)
    tiles = TextData.tiled_windows(ids, 10)
    assert tiles.shape == (10, 10) and tiles.flatten().tolist() == list(range(100))
    sub = TextData.tiled_windows(ids, 10, limit=3)
    assert sub[:, 0].tolist() == [0, 40, 90]


def test_load_from_path(small_corpus: Path):
    data = TextData.load(str(small_corpus))
    assert data.source == str(small_corpus)
    assert data.train_text == small_corpus.read_text(encoding="utf-8")[: data.train_ids.numel()]
