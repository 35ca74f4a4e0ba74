from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from helpers import train_tiny
from textdiffusion.evaluate import (
    CharNgramJudge,
    TrainingReference,
    evaluate_text,
    format_table,
    words_of,
)
from textdiffusion.records import TextEval


@pytest.fixture(scope="module")
def judge_text(shakespeare):
    return shakespeare[:200_000]


def test_judge_is_a_normalised_distribution(judge_text):
    judge = CharNgramJudge(judge_text, order=4)
    context = "ROMEO:\nO Rome"
    total = sum(math.exp(-judge.char_nll(context + c)[-1]) for c in judge.alphabet)
    # the leftover mass belongs to the "never seen" code the judge reserves
    assert 0.99 < total <= 1.0 + 1e-9


def test_judge_prefers_real_text_to_shuffled_text(judge_text, shakespeare):
    judge = CharNgramJudge(judge_text)
    real = shakespeare[300_000:302_000]
    rng = np.random.default_rng(0)
    shuffled = "".join(rng.permutation(list(real)))
    assert judge.perplexity([real]) < 8 < judge.perplexity([shuffled])


def test_judge_is_deterministic(judge_text):
    a, b = CharNgramJudge(judge_text), CharNgramJudge(judge_text)
    assert a.perplexity(["To be or not"]) == b.perplexity(["To be or not"])


def test_sample_statistics(judge_text):
    ref = TrainingReference(judge_text)
    copied = judge_text[1000:1100]
    q = ref.quality([copied])
    assert q["copy_rate"] == 1.0 and q["word_validity"] == 1.0
    looped = ref.quality(["the king the king the king the king the king"])
    assert looped["repetition"] > 0.5 and looped["distinct_2"] < 0.5
    junk = ref.quality(["xq zzkv qqrf wplm vbnx trrq xq zzkv qqrf wplm"])
    assert junk["word_validity"] < 0.3 and junk["copy_rate"] == 0.0


def test_words_drop_window_edges():
    assert words_of("ng of the king's men wal") == ["of", "the", "king's", "men"]


def test_eval_writes_the_documented_schema(small_corpus, tmp_path):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=20)
    result = evaluate_text(run, samples=8, val_windows=16)
    written = (run / "eval.json").read_text()
    assert json.dumps(json.loads(written)) == json.dumps(TextEval.from_json(json.loads(written)).to_json())
    on_disk = json.loads(written)
    assert on_disk == json.loads(json.dumps(result.to_json()))
    keys = ["run", "method", "preset", "step", "weights", "parameters", "device", "val", "exact", "samples",
            "quality", "reference", "speed", "judge", "distance"]
    assert list(on_disk) == keys  # an unlabelled run has no "labels"
    assert result.val.kind == "bound" and result.val.details["time_samples_per_window"] == 4
    assert {"judge_ppl", "word_validity", "distinct_2", "repetition", "copy_rate"} <= set(on_disk["quality"])
    assert result.speed.nfe_per_sample > 0 and result.speed.sample_chars_per_s > 0
    d = result.distance  # 20 steps of training write far from real text, which sits at its floor
    assert (d.texts, d.texts_of, d.chars) == (8, 8, 8 * 32) and 0 < d.floor_bits < d.js_bits <= 1
    table = format_table(result)
    assert "upper bound" in table and "judge perplexity" in table
    assert re.search(rf"n-gram JS \(1-4, bits\) +{d.js_bits:.4f}  real text: {d.floor_bits:.4f}, excess", table)
    assert format_table(TextEval.from_json(on_disk)) == table  # the file read back prints the same table
    older = {k: v for k, v in on_disk.items() if k != "distance"}  # eval.json written before the distance
    assert TextEval.from_json(older).distance is None and "n-gram JS" not in format_table(TextEval.from_json(older))


def test_eval_refuses_a_corpus_that_changed_since_training(small_corpus, tmp_path):
    from textdiffusion.data import DataError

    run = tmp_path / "run"
    train_tiny("ar", small_corpus, run, steps=2)
    small_corpus.write_text(small_corpus.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    with pytest.raises(DataError, match="changed since"):
        evaluate_text(run, samples=2, val_windows=2)


def test_char_entropy_counts_bits_per_character():
    from textdiffusion.evaluate import char_entropy

    assert char_entropy(["abab", "ab"]) == pytest.approx(1.0)
    assert char_entropy(["abcd"]) == pytest.approx(2.0)
    assert char_entropy(["aaaa"]) == 0.0
    assert math.isnan(char_entropy([]))
