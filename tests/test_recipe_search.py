"""benchmarks/recipe_search.py's bookkeeping, without training: how a budget is split, which runs it reuses, how
the best diffusion recipe is picked and what the table says of the cost."""

from __future__ import annotations

import json

import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def search():
    return benchmark_module("recipe_search")


def test_an_ar_recipe_spends_the_share_on_ar_and_the_rest_on_itself(search):
    adapted, scratch = search.BY_NAME["ar+block4-count-shift-anneal"], search.BY_NAME["block4-count"]
    assert adapted.steps(1000, 0.75) == (750, 250)
    assert scratch.steps(1000, 0.75) == (0, 1000)
    assert "method.anneal_steps=125" in adapted.settings(250)  # annealed over half its own steps
    assert not any(s.startswith("method.anneal_steps") for s in scratch.settings(1000))


def test_every_recipe_names_real_config_fields(search):
    from textdiffusion.methods.configs import make_config

    for recipe in search.RECIPES:
        own = recipe.steps(1000, 0.75)[1]
        make_config(recipe.method, "cpu", list(recipe.settings(own)))  # a bad field or value raises


def _row(search, recipe: str, nll: float, budget: int = 1000, autoregressive: bool = False):
    return search.Row(recipe, budget, f"runs/{recipe}", 750 if recipe.startswith("ar+") else 0, 250, 1000, 2e12,
                      nll, nll + 0.1, nll, autoregressive=autoregressive)


def test_the_best_diffusion_recipe_has_blocks_of_two_or_more_and_the_table_counts_ar_steps(search):
    rows = [_row(search, "ar", 2.0, autoregressive=True), _row(search, "ar+block1-count-shift", 2.01,
                                                               autoregressive=True),
            _row(search, "ar+block4-count", 2.3), _row(search, "masked", 2.8)]
    for r in rows:
        r.ratio = r.nll_nats / 2.0
    best = search.best_rows(rows)
    assert best[1000].recipe == "ar+block4-count"
    table = search.markdown(rows, "python benchmarks/recipe_search.py", 256, 0.75)
    assert "| 1,000 | **ar+block4-count** | 750 + 250 | 1,000 |" in table
    assert "`ar+block4-count` 1.150x ar" in table
    assert "ar+block1-count-shift (autoregressive)" in table


def test_a_reused_run_with_other_settings_is_refused_by_name(search, tmp_path):
    rd = tmp_path / "T1000" / "block4-count"
    rd.mkdir(parents=True)
    cfg = {"method": {"name": "block", "block_size": 8, "estimator": "count"}, "train": {"init_from": ""}}
    (rd / "config.json").write_text(json.dumps({"config": cfg}))
    search.check_settings(rd, "block", ["method.block_size=8", "method.estimator=count"], None)
    with pytest.raises(SystemExit, match=r"method\.block_size=8"):
        search.check_settings(rd, "block", ["method.block_size=4", "method.estimator=count"], None)
