"""benchmarks/repeated_data.py: when a run stops, what counts as a crossover, the fit that predicts one, and a
study that resumes where it was killed, on the tiny preset."""

from __future__ import annotations

import json
import math

import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def study():
    return benchmark_module("repeated_data")


def points(study, values, exact=None, per_epoch=10):
    return [study.Point((i + 1) * per_epoch, float(i + 1), v, None if exact is None else exact[i])
            for i, v in enumerate(values)]


def curve(study, entry, values, stopped="budget", autoregressive=False, exact=None):
    return study.Curve(entry, 1000, f"runs/{entry}", autoregressive, points(study, values, exact), 100, stopped)


def test_flags_are_checked_in_one_line(study):
    assert [study.parse_size(s) for s in ("25k", "1M", "4000", "2.5k")] == [25_000, 1_000_000, 4_000, 2_500]
    for argv, message in ((["--sizes", "lots"], "--sizes takes character counts such as 25k,100k,400k,1M; 'lots'"),
                          (["--sizes", ","], "--sizes needs at least one size"),
                          (["--entries", "ar-d0,bogus"], "unknown entry 'bogus'; choose from ar-d0, ar-d0.1"),
                          (["--max-steps", "0"], "--max-steps must be at least 1, not 0"),
                          (["--eval-epochs", "nan"], "--eval-epochs must be a number >= 0, not nan"),
                          (["--hours-per-size", "-1"], "--hours-per-size must be a number >= 0, not -1.0")):
        with pytest.raises(SystemExit) as e:
            study.parse_args(argv)
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


def test_evaluations_come_at_round_epoch_counts(study):
    assert study.eval_spacing(184.0) == 2.5  # 184 / 40 = 4.6 -> the round spacing below it
    assert study.eval_spacing(46.0) == 1.0
    assert study.eval_spacing(4.6) == 0.1
    assert study.eval_spacing(400.0) == 10.0


def test_a_run_stops_after_patience_evaluations_above_its_best(study):
    pts = points(study, [3.0, 2.5, 2.0, 2.1, 2.05, 2.2])
    assert study.evaluations_above_best(pts) == 3
    assert study.stop_reason(pts, 3, step=60, steps=100, finished=False) == "patience"
    assert study.stop_reason(pts, 4, step=60, steps=100, finished=False) is None
    assert study.stop_reason(pts, 0, step=60, steps=100, finished=False) is None  # 0: the whole budget
    assert study.stop_reason(pts, 4, step=100, steps=100, finished=False) == "budget"
    assert study.stop_reason(pts, 4, step=70, steps=100, finished=True) == "budget"  # a spent time budget
    # a new best resets the count
    assert study.evaluations_above_best(points(study, [3.0, 2.5, 2.6, 2.7, 2.4])) == 0


def test_a_stall_early_in_a_run_does_not_stop_it(study):
    """masked diffusion can sit near the unigram entropy for a few evaluations before it learns more: no patience
    stop in the first tenth of the budget (at least twice the warm-up)."""
    assert study.protected_steps(6000, 100) == 600 and study.protected_steps(300, 100) == 200
    stall = points(study, [3.5, 3.39, 3.40, 3.41, 3.40, 3.42])  # evaluations at steps 10 to 60
    assert study.stop_reason(stall, 4, step=60, steps=1000, finished=False, protected=200) is None
    assert study.stop_reason(stall, 4, step=60, steps=1000, finished=False, protected=60) == "patience"


def test_the_crossover_is_where_an_entry_reaches_ars_best(study):
    masked = curve(study, "masked", [4.0, 2.5, 2.0, 1.7, 1.6], exact=[3.9, 2.4, 1.9, 1.65, 1.55])
    # early, every model is near uniform: being below ar's first evaluations is no crossover
    assert study.crossover(masked, 1.65) == 5.0
    assert study.crossover(masked, 1.65, exact=True) == 4.0
    assert study.crossover(masked, 1.5) is None


def test_the_fit_recovers_a_power_law_and_predicts_where_it_reaches_a_level(study):
    E, A, alpha = 1.5, 2.0, 0.7
    pts = [(e, E + A * e ** -alpha) for e in (1, 2, 4, 8, 16, 32, 64)]
    fit = study.fit_power_law(pts)
    assert abs(fit.E - E) < 0.02 and abs(fit.A - A) < 0.03 * A
    assert fit.alpha == pytest.approx(alpha, rel=0.03) and fit.rmse < 1e-3 and fit.first_epoch == 1
    assert fit.reaches(1.6) == pytest.approx((A / 0.1) ** (1 / alpha), rel=0.1)
    assert fit.reaches(1.4) is None  # below the asymptote: never
    assert study.fit_power_law(pts[:3]) is None  # too few points to say anything


def test_the_crossover_exponent_is_a_log_log_slope(study):
    crossings = {u: 3.0 * u ** 1.17 for u in (25_000, 100_000, 400_000)}
    assert study.scaling_exponent(crossings) == pytest.approx(1.17)
    assert study.scaling_exponent({25_000: 10.0}) is None


def test_each_size_is_judged_against_the_best_ar_and_only_falling_curves_are_fitted(study):
    falling = [3.0 - math.log(i + 1) * 0.2 for i in range(12)]
    curves = [curve(study, "ar-d0", [2.5, 2.0, 1.8, 1.9, 2.0, 2.1], "patience", autoregressive=True),
              curve(study, "ar-d0.1", [2.6, 2.1, 1.7, 1.75, 1.8, 1.9], "patience", autoregressive=True),
              curve(study, "masked", falling, "budget", exact=[v - 0.05 for v in falling]),
              curve(study, "block4", [3.0, 2.4, 2.2, 2.3, 2.4, 2.5], "patience", exact=[2.9, 2.3, 2.1, 2.2, 2.3, 2.4])]
    r = study.analyse(1000, curves, warmup_steps=0)
    assert r.ar_best == 1.7 and r.ar_best_entry == "ar-d0.1"
    rows = {row.entry: row for row in r.rows}
    assert rows["ar-d0"].exact.ratio == pytest.approx(1.8 / 1.7) and rows["ar-d0"].bound is None
    masked = rows["masked"].bound
    assert masked.crossover_epoch is None and not masked.bottomed_out
    assert masked.predicted_crossover_epoch > 12 and masked.fit.points == 12
    assert rows["masked"].exact.nats == pytest.approx(falling[-1] - 0.05)
    block = rows["block4"].bound
    assert block.bottomed_out and block.fit is None and block.predicted_crossover_epoch is None
    scales = {sc.name: sc for sc in study.scaling([r])}
    assert scales["masked (bound)"].epochs == {1000: masked.predicted_crossover_epoch}
    assert scales["block4 (bound)"].epochs == {} and scales["block4 (bound)"].beta is None
    text = study.markdown([r], study.scaling([r]), "cmd", 64, 4, "cpu")
    assert "| block4 | 2.2000 | 3.0 | 2.1000 | 3.0 | 1.294x | 1.235x | none (bottomed out) |" in text
    assert f"| masked | {falling[-1]:.4f} | 12.0 |" in text and "none; predicted" in text
    assert "### U = 1,000 characters (ar's best 1.7000, ar-d0.1)" in text


def test_a_killed_study_resumes_its_runs_and_reuses_the_stopped_ones(study, tmp_path, capsys):
    """A run stopped mid-way (as by Ctrl-C) resumes from its checkpoint and ends with the evaluations of a run
    that was never stopped; a second invocation trains nothing."""
    from textdiffusion.trainer import Trainer

    argv = ["--preset", "tiny", "--sizes", "3k", "--entries", "ar-d0,masked", "--max-steps", "8", "--eval-epochs",
            "0.25", "--windows", "4", "--patience", "0"]
    killed = [*argv, "--runs", str(tmp_path / "killed"), "--out", str(tmp_path / "killed-out" / "rd")]
    args = study.parse_args(killed)
    cfg, rate = study.run_config(study.BY_NAME["masked"], 3000, args)
    assert cfg.train.eval_every == rate.steps_for(0.25) == 3 and cfg.data.train_chars == 3000
    assert cfg.train.eval_exact_windows == 4
    rd = study.run_dir(tmp_path / "killed", 3000, study.BY_NAME["masked"])
    rd.parent.mkdir(parents=True)
    Trainer(cfg, rd, progress=False).train(stop_at=4)  # a checkpoint at step 4, between two evaluations
    assert study.main(killed) == 0
    err = capsys.readouterr().err
    assert "U=3,000 masked: resuming at step 4" in err and "stopped: budget" in err
    straight = [*argv, "--runs", str(tmp_path / "straight"), "--out", str(tmp_path / "straight-out" / "rd")]
    assert study.main(straight) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "killed-out" / "rd.json").read_text())["sizes"][0]["curves"]
    b = json.loads((tmp_path / "straight-out" / "rd.json").read_text())["sizes"][0]["curves"]
    assert [c["points"] for c in a] == [c["points"] for c in b]
    assert [p["step"] for p in a[1]["points"]] == [3, 6, 8]
    assert all(p["exact"] is not None for p in a[1]["points"])
    assert (tmp_path / "killed-out" / "rd.png").stat().st_size > 0
    assert "### U = 3,000 characters" in (tmp_path / "killed-out" / "rd.md").read_text()
    assert study.main(killed) == 0
    err = capsys.readouterr().err
    assert err.count("reused (budget") == 2 and "training" not in err.replace("training split", "")


def test_a_study_with_another_budget_is_refused_not_mixed(study, tmp_path):
    argv = ["--preset", "tiny", "--sizes", "3k", "--entries", "ar-d0", "--max-steps", "3", "--windows", "4",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "rd")]
    assert study.main(argv) == 0
    with pytest.raises(SystemExit, match=r"was started with a budget of 3 steps, this study asks for 5; pass the "
                                         r"same --max-steps/--max-epochs, or another --runs folder"):
        study.main([*argv[:6], "--max-steps", "5", *argv[8:]])
    with pytest.raises(SystemExit, match=r"^error: \(1/1\) U=2,000,000 ar-d0: data.train_chars=2,000,000 is more "):
        study.main([*argv[:3], "2M", *argv[4:]])


def test_hours_per_size_share_out_a_time_budget_that_ends_a_run(study, tmp_path, capsys):
    argv = ["--preset", "tiny", "--sizes", "3k", "--entries", "ar-d0,masked", "--max-steps", "400", "--windows", "4",
            "--hours-per-size", "0.000002", "--eval-epochs", "1", "--runs", str(tmp_path / "runs"), "--out",
            str(tmp_path / "out" / "rd")]
    args = study.parse_args(argv)
    cfg, _ = study.run_config(study.BY_NAME["ar-d0"], 3000, args)
    assert cfg.train.time_budget_s == pytest.approx(0.000002 * 3600 / 2)
    assert study.main(argv) == 0
    capsys.readouterr()
    curves = json.loads((tmp_path / "out" / "rd.json").read_text())["sizes"][0]["curves"]
    assert [c["stopped"] for c in curves] == ["budget", "budget"]
    final = json.loads((study.run_dir(tmp_path / "runs", 3000, study.BY_NAME["ar-d0"]) / "final.json").read_text())
    assert final["out_of_time"] and final["step"] < 400


def test_the_gap_to_ar_is_fitted_across_sizes_and_names_where_it_closes(study):
    sizes = (25_000, 100_000, 400_000)
    c, gamma = 0.5, 0.07
    gamma_got, star = study.ratio_fit({u: c * u ** gamma for u in sizes})
    assert gamma_got == pytest.approx(gamma)
    assert star == pytest.approx(c ** (-1 / gamma), rel=1e-6)  # where c U^gamma = 1
    assert 0.5 * star ** 0.07 == pytest.approx(1.0)
    assert study.ratio_fit({25_000: 1.1}) == (None, None)
    flat, where = study.ratio_fit({25_000: 1.1, 100_000: 1.1})
    assert flat == 0 and where is None  # a gap that does not move with U never closes

    def size_result(size, masked_best):
        curves = [curve(study, "ar-d0", [2.5, 2.0, 2.1, 2.2, 2.3, 2.4], "patience", autoregressive=True),
                  curve(study, "masked", [3.0, masked_best, 2.9, 3.0, 3.1, 3.2], "patience")]
        return study.analyse(size, curves, warmup_steps=0)

    results = [size_result(25_000, 2.08), size_result(100_000, 2.24)]
    gaps = {g.name: g for g in study.gaps(results)}
    assert set(gaps) == {"masked (bound)"}  # ar is the reference; no exact column without exact values
    g = gaps["masked (bound)"]
    assert g.ratios == {25_000: pytest.approx(1.04), 100_000: pytest.approx(1.12)}
    assert g.gamma == pytest.approx(math.log(1.12 / 1.04) / math.log(4))
    assert g.crossover_size < 25_000  # the gap narrows toward smaller U
    text = study.markdown(results, study.scaling(results), "cmd", 64, 4, "cpu", study.gaps(results))
    assert "### The gap to ar across U" in text
    assert f"| masked (bound) | 25,000: 1.040x, 100,000: 1.120x | {g.gamma:+.3f} | {g.crossover_size:,.0f} |" in text


def test_a_patience_stop_at_the_schedules_floor_is_a_plateau_and_is_fitted(study):
    falling = [3.0 - math.log(i + 1) * 0.2 for i in range(9)]
    plateau = falling + [falling[-1] + 0.001] * 4  # 13 evaluations of 10 steps: it stops at step 130 of 150
    early = falling + [falling[-1] + 0.001] * 4
    ar = curve(study, "ar-d0", [2.5, 2.0, 1.8, 1.9, 2.0, 2.1], "patience", autoregressive=True)
    late_stop = study.Curve("masked", 1000, "runs/masked", False, points(study, plateau), 150, "patience")
    early_stop = study.Curve("block4", 1000, "runs/block4", False, points(study, early), 1000, "patience")
    assert not study.bottomed_out(late_stop) and study.bottomed_out(early_stop)
    rows = {row.entry: row for row in study.analyse(1000, [ar, late_stop, early_stop], warmup_steps=0).rows}
    assert rows["masked"].bound.fit is not None and rows["masked"].bound.fit.points == 9
    assert rows["block4"].bound.fit is None and rows["block4"].bound.crossover_text() == "none (bottomed out)"


def test_an_aborted_study_ends_in_one_line_that_says_how_to_resume(study, tmp_path, monkeypatch):
    from textdiffusion.trainer import TrainingAborted

    def aborted(*a, **k):
        raise TrainingAborted("aborted without saving; the checkpoint at step 4 is intact")

    monkeypatch.setattr(study, "train_run", aborted)
    with pytest.raises(SystemExit) as e:
        study.main(["--preset", "tiny", "--sizes", "3k", "--entries", "ar-d0", "--runs", str(tmp_path / "r"),
                    "--out", str(tmp_path / "o" / "rd")])
    assert str(e.value) == ("(1/1) U=3,000 ar-d0: aborted without saving; the checkpoint at step 4 is intact; the "
                            "same command resumes the study")
