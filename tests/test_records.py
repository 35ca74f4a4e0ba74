"""The typed records of a run directory write exactly the JSON the files have always held, and read every
version of them: the fingerprint and every earlier run directory depend on the same keys, order and values."""

from __future__ import annotations

import json

import pytest

from textdiffusion.records import (
    EvalRow,
    ImageEval,
    TextEval,
    TrainRow,
    TrainSummary,
    parse_row,
    read_metrics,
    truncate_metrics,
)

FINAL_TEXT = {"run_dir": "runs/m", "step": 60, "steps": 60, "elapsed": 3.5, "interrupted": False,
              "out_of_time": False, "chars_per_s": 1234.5, "unit": "chars", "val_bpc": 4.6, "val_nats": 3.2,
              "val_kind": "bound", "val_windows": 64,
              "val_details": {"stderr_nats": 0.07, "time_samples_per_window": 4},
              "val_bpc_raw": 4.7, "val_nats_raw": 3.3}
FINAL_IMAGE = {"run_dir": "runs/i", "step": 40, "steps": 40, "elapsed": 1.0, "interrupted": False,
               "out_of_time": True, "images_per_s": 80.0, "unit": "images", "val_bpd": 8.3, "val_nats": 5.75,
               "val_kind": "bound", "val_windows": 32, "val_details": {"conditional_on_label": True}}
STOPPED = {"run_dir": "runs/s", "step": 13, "steps": 20, "elapsed": 0.4, "interrupted": True, "out_of_time": False,
           "chars_per_s": 99.0, "unit": "chars", "scoring_interrupted": True}
EVAL_ROW = {"step": 30, "train_loss": 3.65, "val_bpc": 4.94, "val_nats": 3.43, "val_kind": "bound", "val_windows": 32,
            "lr": 0.0019, "chars_per_s": 5000.0, "elapsed": 2.0, "mfu": 0.31}
IMAGE_ROW = {"step": 20, "train_loss": 0.2, "val_bpd": 8.9, "val_nats": 6.1, "val_kind": "bound", "val_windows": 32,
             "lr": 0.001, "images_per_s": 64.0, "elapsed": 1.5}
TRAIN_ROW = {"step": 5, "kind": "train", "train_loss": 3.9, "lr": 0.001, "grad_norm": 1.5, "grad_norm_max": 2.5,
             "chars_per_s": 4000.0, "tokens_per_s": 8000.0, "elapsed": 0.5, "mfu": 0.2}
EVAL_JSON = {
    "run": "runs/m", "method": "masked", "preset": "tiny", "step": 60, "weights": "ema", "parameters": 29152,
    "device": "cpu",
    "val": {"bpc": 4.6, "nats_per_char": 3.19, "kind": "bound", "windows": 16, "chars": 512, "estimator": "time",
            "stderr_nats": 0.14, "time_samples_per_window": 4},
    "samples": {"n": 4, "length": 32, "sampler": "ancestral", "steps": 32, "temperature": 1.0, "top_k": 0,
                "top_p": 1.0, "seed": 0, "overrides": [], "examples": ["ab", "cd", "ef"]},
    "quality": {"judge_ppl": 1046.3, "word_validity": 0.25, "distinct_2": 1.0, "repetition": 0.0, "copy_rate": 0.0,
                "char_entropy": 4.53, "words": 12},
    "reference": {"judge_ppl": 4.8, "word_validity": 1.0, "distinct_2": 1.0, "repetition": 0.0, "copy_rate": 0.0,
                  "char_entropy": 4.7, "words": 14, "what": "4 real validation windows of 32 characters"},
    "speed": {"seconds": 0.5, "sample_chars_per_s": 256.0, "nfe_per_sample": 32.0, "mean_unmasked": 0.5},
    "judge": {"kind": "character 5-gram, interpolated Witten-Bell", "fitted_on": "training split of x", "chars": 9},
    "labels": {"names": ["A", "B"], "samples": "unconditional (no label)", "val": "conditional NLL"},
}


def _same(written: dict, read_back: dict) -> None:
    """Equal keys in equal order with equal values, nested dicts included (what json.dumps shows)."""
    assert json.dumps(read_back) == json.dumps(written)


@pytest.mark.parametrize("final", [FINAL_TEXT, FINAL_IMAGE, STOPPED])
def test_final_json_round_trips(final, tmp_path):
    summary = TrainSummary.from_json(final)
    _same(final, summary.to_json())
    summary.write(tmp_path)
    assert TrainSummary.read(tmp_path) == summary


def test_a_summary_without_a_score_reads_as_none_and_a_missing_file_as_no_summary(tmp_path):
    assert TrainSummary.from_json(STOPPED).score is None and TrainSummary.from_json(STOPPED).scoring_interrupted
    assert TrainSummary.read(tmp_path) is None
    (tmp_path / "final.json").write_text("{not json")
    assert TrainSummary.read(tmp_path) is None  # an unreadable record shows no number


@pytest.mark.parametrize("row", [EVAL_ROW, IMAGE_ROW, TRAIN_ROW])
def test_metrics_rows_round_trip(row):
    parsed = parse_row(row)
    assert isinstance(parsed, TrainRow if row.get("kind") == "train" else EvalRow)
    _same(row, parsed.to_json())


def test_an_older_row_reads_its_missing_fields_as_none():
    row = EvalRow.from_json({"step": 10, "train_loss": 3.0, "val_bpc": 4.0})  # a row of textdiffusion 0.1
    assert (row.unit, row.bits, row.kind, row.windows, row.rate, row.mfu) == ("char", 4.0, None, None, None, None)


def test_metrics_file_skips_a_cut_line_and_truncates_to_a_step(tmp_path):
    lines = [json.dumps(TRAIN_ROW), json.dumps(EVAL_ROW), json.dumps({**EVAL_ROW, "step": 60}), '{"step": 7']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert [r.step for r in read_metrics(tmp_path)] == [5, 30, 60]
    truncate_metrics(tmp_path, 30)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:2]  # kept as written
    assert read_metrics(tmp_path / "absent") == []


def test_text_eval_json_round_trips():
    ev = TextEval.from_json(EVAL_JSON)
    assert ev.val.details["stderr_nats"] == 0.14 and ev.speed.stats == {"mean_unmasked": 0.5}
    assert ev.quality.words == 12 and ev.reference_what.startswith("4 real") and ev.labels.names == ["A", "B"]
    _same(EVAL_JSON, ev.to_json())
    plain = {k: v for k, v in EVAL_JSON.items() if k != "labels"}
    _same(plain, TextEval.from_json(plain).to_json())


def test_image_eval_reads_its_fields_and_keeps_the_rest():
    ev = ImageEval.from_json({"run": "r", "step": 40, "samples": 64, "sampler": "ddim", "steps": 50, "fid": 12.5,
                              "class_accuracy": None, "seconds_per_image": 0.01, "nfe": 50})
    assert (ev.step, ev.fid, ev.class_accuracy, ev.eta, ev.info) == (40, 12.5, None, None, {"run": "r", "nfe": 50})
    written = {"run": "r", "step": 40, "samples": 64, "seed": 0, "sampler": "ddim", "steps": 50, "nfe": 50.0,
               "fid": 12.5, "class_accuracy": 0.9, "classifier_test_accuracy": 0.98, "seconds": 1.0,
               "seconds_per_image": 0.01, "device": "cpu"}
    _same(written, ImageEval.from_json(written).to_json())  # the same keys, values and order


def test_non_finite_numbers_are_written_as_null_and_nothing_else_changes(tmp_path):
    from textdiffusion.checkpoint import read_json, write_json
    from textdiffusion.json_writing import to_json

    nan, inf = float("nan"), float("inf")
    assert to_json({"a": nan, "b": [inf, 1.5, (-inf,)], "c": {"d": "NaN"}}) == \
        '{"a": null, "b": [null, 1.5, [null]], "c": {"d": "NaN"}}'
    finite = {"x": [1.0, 2, "é"], "y": None}
    assert to_json(finite, ensure_ascii=False, indent=2) == json.dumps(finite, ensure_ascii=False, indent=2)
    write_json(tmp_path / "final.json", {"val": {"bpc": nan}})
    assert json.loads((tmp_path / "final.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"val": {"bpc": None}} == read_json(tmp_path / "final.json")


def test_a_row_knows_when_it_held_a_non_finite_value():
    from textdiffusion.records import EvalRow, TrainRow, held_nonfinite

    measured = EvalRow(10, 2.0, "char", 3.0, 2.1, "bound", 4)
    assert not held_nonfinite(measured)
    assert held_nonfinite(EvalRow(10, float("nan"), "char", 3.0, 2.1, "bound", 4))  # bare, from an older file
    assert held_nonfinite(EvalRow(10, 2.0, "char", None, None, "bound", 4))  # measured, written as null
    assert not held_nonfinite(EvalRow(0, None, "char", None, None, None, None))  # nothing measured
    assert held_nonfinite(TrainRow(5, None, 1e-3, 0.5, 0.9, "chars", 100.0, 1.0))  # type: ignore[arg-type]


def test_a_score_written_as_null_reads_back_as_nan():
    import math

    from textdiffusion.records import FinalScore, ValScore

    final = FinalScore.from_json({"unit": "chars", "val_bpc": None, "val_nats": None, "val_kind": "bound"})
    assert final is not None and math.isnan(final.bits) and math.isnan(final.nats)
    older = FinalScore.from_json({"unit": "chars", "val_bpc": 2.5})  # written before val_nats existed
    assert older is not None and older.nats is None
    val = ValScore.from_json({"bpc": None, "nats_per_char": None, "kind": "exact", "windows": 4, "chars": 64})
    assert math.isnan(val.bpc) and math.isnan(val.nats_per_char) and val.windows == 4
