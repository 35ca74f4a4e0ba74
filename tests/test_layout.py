"""The package's shape: layers that point one way, no per-method branches outside ``methods/``, config
records that hold only a method's own fields, and run directories written by 0.1.0 that still load and
sample exactly as they did."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from textdiffusion.checkpoint import CheckpointError
from textdiffusion.config import LEGACY_METHOD_FIELDS, ConfigError, apply_sampling_overrides
from textdiffusion.data.images import to_pixels
from textdiffusion.methods import REGISTRY, SampleRequest
from textdiffusion.methods.configs import config_from_dict, make_config
from textdiffusion.methods.image import ImageRequest
from textdiffusion.runs import open_run

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "textdiffusion"
OLD_RUNS = Path(__file__).resolve().parent / "data" / "runs-0.1.0"


# ---- imports ------------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(source: str) -> set[str]:
    """The dotted names a module's source imports, at any depth (a lazy import inside a function closes a
    circle just as well): ``import`` and ``from`` statements, and the string literal given to
    ``importlib.import_module`` (or ``import_module``, ``__import__``), which is an import written as a call."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.add(node.module)
            targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                targets.add(node.args[0].value)
    return targets


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (see :func:`_imported_names`). Importing ``a.b.c`` also runs
    the package ``a.b``'s ``__init__``, except for the importer's own packages, which are already running."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets = _imported_names(path.read_text(encoding="utf-8"))
        edges = set()
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the module and the packages it runs on the way
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and prefix not in own_packages:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_imports():
    graph = _import_graph()
    assert "textdiffusion.methods.base" in graph["textdiffusion.methods.masked"]
    assert "textdiffusion.config" in graph["textdiffusion.methods.base"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    lazy = ("import importlib\n"
            "def f():\n"
            "    from textdiffusion import runs\n"
            "    importlib.import_module('textdiffusion.methods')\n"
            "    return import_module('textdiffusion.data.images'), __import__('textdiffusion.trainer')\n"
            "importlib.import_module(name)\n")  # a name known only at run time is no literal to follow
    assert _imported_names(lazy) == {"importlib", "textdiffusion", "textdiffusion.runs", "textdiffusion.methods",
                                     "textdiffusion.data.images", "textdiffusion.trainer"}


def test_no_import_circles():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_config_knows_no_method_and_diffusion_no_config():
    """Data flows one way: the methods read their configs, never the reverse; the diffusion processes take
    plain numbers."""
    for name, targets in _import_graph().items():
        if name.startswith("textdiffusion.config"):
            assert not {t for t in targets if t.startswith("textdiffusion.methods")}, f"{name} imports a method"
        if name.startswith("textdiffusion.diffusion"):
            assert not {t for t in targets if t.startswith("textdiffusion.config")}, f"{name} imports the config"


def _is_app(module: str) -> bool:
    """The apps: the command line, the live page, compare, and ``python -m textdiffusion``, the command line
    by another name."""
    return module.startswith("textdiffusion.apps") or module == "textdiffusion.__main__"


def test_the_library_never_imports_the_entry_points():
    """The library (the Python API included) stands on its own; the apps sit on top of it. The API is the
    library's top: only the apps and the package's own front door (its lazy exports) import it."""
    for name, targets in _import_graph().items():
        if _is_app(name):
            continue
        apps = sorted(t for t in targets if _is_app(t))
        assert not apps, f"{name} imports {apps}: the library must not depend on the apps"
        if name != "textdiffusion" and not name.startswith("textdiffusion.api"):
            api = sorted(t for t in targets if t == "textdiffusion.api" or t.startswith("textdiffusion.api."))
            assert not api, f"{name} imports {api}, the Python API, which sits on top of the library"


def test_no_method_name_branches_outside_methods():
    """Per-method behaviour belongs to the method: nothing else compares a method's name."""
    # method.name == "x", method_name != "x", method in ("a", "b"), cfg["method"]["name"] == ..., .get("name") == ...
    subject = r"""((?<!request\.)method(_name|\.name|\[["']name["']\])?|\.get\(["']name["']\))"""
    pattern = re.compile(subject + r"""\s*(==|!=|\bin\b)\s*[("']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "methods" in path.relative_to(PACKAGE).parts:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _method_classes() -> set[str]:
    """The names of every class in the Method hierarchy, abstract and built-in."""
    from textdiffusion.methods import Method

    names, todo = set(), [Method]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return {n for n in names if not n.startswith("_")}


def _family_branches(lines: list[str]) -> list[int]:
    """Line numbers (from 1) that ask which class a method is (``isinstance(m, ImageDiffusion)``) or which
    network its config names (``cfg.method.network == "unet"``)."""
    classes = "|".join(sorted(_method_classes()))
    family = re.compile(rf"\b(isinstance|issubclass)\(.*?\b({classes})\b")
    network = re.compile(r"""\.network\s*(==|!=|\bin\b)\s*[("']""")
    return [i for i, line in enumerate(lines, 1) if family.search(line) or network.search(line)]


def test_the_family_rule_sees_a_branch():
    assert {"Method", "TextMethod", "MaskedDiffusion", "ImageDiffusion"} <= _method_classes()
    lines = ["if isinstance(run.method, ImageDiffusion):", "ok = isinstance(x, (str, TextMethod))",
             'image = cfg.method.network == "unet"', "if run.method.family == 'image':", "isinstance(x, str)"]
    assert _family_branches(lines) == [1, 2, 3]


def test_no_method_family_branches_outside_methods():
    """What a family of methods does differently is declared by the method (``family``, ``command``, hooks):
    nothing outside ``methods/`` asks which class a method is or which network its config builds."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "methods" in path.relative_to(PACKAGE).parts:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        offenders += [f"{path.relative_to(PACKAGE)}:{i}: {lines[i - 1].strip()}" for i in _family_branches(lines)]
    assert not offenders, "\n".join(offenders)


# ---- configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_config_records_only_the_methods_own_fields(method):
    cfg = make_config(method, "tiny")
    recorded = cfg.to_dict()
    own = {f for f in recorded["method"]}
    assert own == {f.name for f in dataclasses.fields(cfg.method)}
    assert recorded["method"]["name"] == method
    network = cfg.method.network
    assert network in recorded and ({"model", "unet"} - {network}).isdisjoint(recorded)
    assert config_from_dict(json.loads(json.dumps(recorded))).to_dict() == recorded  # round trip


def test_ar_records_no_diffusion_options():
    method = make_config("ar", "cpu").to_dict()["method"]
    for field in ("noise_schedule", "decoder", "timesteps", "schedule", "guidance", "eval_time_samples"):
        assert field not in method


def test_sampling_fields_are_marked_on_the_class():
    cfg = make_config("masked", "tiny")
    assert set(cfg.method.sampling_fields()) >= {"sampler", "sample_steps", "temperature", "confidence"}
    assert "schedule" not in cfg.method.sampling_fields()
    apply_sampling_overrides(cfg, ["method.confidence=0.5"])
    assert cfg.method.confidence == 0.5
    with pytest.raises(ConfigError, match="can only change its sampling options"):
        apply_sampling_overrides(cfg, ["method.schedule=linear"])
    with pytest.raises(ConfigError, match="can only change its sampling options"):  # another method's field
        apply_sampling_overrides(make_config("ar", "tiny"), ["method.eta=0.5"])


def test_unknown_and_foreign_fields_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown field 'noise_schedule'; the ar method has"):
        make_config("ar", "tiny", ["method.noise_schedule=cosine"])
    with pytest.raises(ConfigError, match="does not use the unet section"):
        make_config("masked", "tiny", ["unet.base_channels=8"])
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        make_config("nope", "tiny")


def test_a_0_1_0_config_drops_other_methods_fields_and_refuses_unknown_ones():
    legacy = json.loads((OLD_RUNS / "ar" / "config.json").read_text())["config"]
    assert set(legacy["method"]) == LEGACY_METHOD_FIELDS  # the 0.1.0 union, every method's fields
    cfg = config_from_dict(legacy)
    assert set(cfg.to_dict()["method"]) == {"name", "sampler", "temperature", "top_k", "top_p", "fim_rate",
                                            "fim_mode"}
    assert cfg.method.fim_rate == 0.0  # a run from before fill-in-the-middle trains and samples as it did
    assert "unet" not in cfg.to_dict()
    edited = {**legacy, "method": {**legacy["method"], "temperatur": 0.5}}
    with pytest.raises(ConfigError, match=r"method\.temperatur, which the ar method does not have"):
        config_from_dict(edited)


def test_an_edited_run_directory_is_refused_in_one_line(tmp_path):
    run = tmp_path / "masked"
    shutil.copytree(OLD_RUNS / "masked", run)
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["method"]["mask_schedule"] = "cosine"  # a field no version had
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises((ConfigError, CheckpointError), match="mask_schedule"):
        open_run(run, device="cpu")


# ---- run directories written by 0.1.0 -----------------------------------------------------------------------
def test_runs_of_0_1_0_sample_exactly_as_they_did():
    """Tiny runs trained and sampled with textdiffusion 0.1.0 (tests/data/runs-0.1.0, config.json with the
    33-field method union); the same requests give the same samples today. The ar and masked samples were
    re-recorded once, deliberately, when the categorical draw moved to float64 (issue 13; the draws differ,
    see benchmarks/results/fingerprint_float64_gumbel_diff.txt); the Gaussian samplers still give 0.1.0's."""
    expected = json.loads((OLD_RUNS / "samples.json").read_text())
    for method, sampler in (("ar", ""), ("masked", "confidence"), ("embedding", "ddim"), ("bits", "ddpm")):
        run = open_run(OLD_RUNS / method, device="cpu")
        req = SampleRequest(n=2, length=24, sampler=sampler, steps=6)
        res = run.method.sample(run.model, req, torch.Generator().manual_seed(11))
        assert [run.tokenizer.decode(r.tolist()) for r in res.ids] == expected[method], method
    run = open_run(OLD_RUNS / "image", device="cpu")
    req = ImageRequest(n=3, labels=[1, 2, 3], sampler="ddim", steps=5, guidance=2.0)
    res = run.method.sample(run.model, req, torch.Generator().manual_seed(11))
    assert hashlib.sha256(to_pixels(res.images).numpy().tobytes()).hexdigest() == expected["image"]


@pytest.mark.slow
def test_every_method_prints_what_it_printed():
    """benchmarks/fingerprint.py retrains a tiny run of every method (block, a speaker-labelled run and
    classifier-guided samples included) and compares its validation numbers, metrics, training samples, CLI
    samples and eval.json with benchmarks/results/fingerprint.json (about 2.5 minutes). Float rounding differs
    between CPUs: the record is of the machine it was made on."""
    import subprocess
    import sys

    repo = PACKAGE.parents[1]
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "fingerprint.py"), "--check",
                           str(repo / "benchmarks" / "results" / "fingerprint.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_readme_layout_matches_the_tree():
    """Every module of the package is named in README's layout block, and every file it names exists."""
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[\w.]+\.(?:py|j2|html)\b", block))
    files = {p.name for p in PACKAGE.rglob("*") if p.suffix in (".py", ".j2", ".html") and p.name != "__init__.py"}
    files.discard("__main__.py")
    assert files <= named, f"modules missing from README's layout: {sorted(files - named)}"
    others = {"fingerprint.py", "report.html"}  # a benchmark script, and compare's output
    assert named <= files | others, f"README names files that do not exist: {sorted(named - files - others)}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert all(f"{folder}/" in block for folder in folders), folders


def test_the_help_catalogue_is_the_registry():
    """catalogue.py lists the built-in methods for `--help` without importing torch; it must not drift."""
    from textdiffusion.catalogue import IMAGE_METHODS, TEXT_METHODS
    from textdiffusion.methods import TextMethod

    builtin = {name: cls for name, cls in REGISTRY.items() if cls.__module__.startswith("textdiffusion.methods.")}
    assert {n: c.samplers for n, c in builtin.items() if issubclass(c, TextMethod)} == TEXT_METHODS
    assert {n: c.samplers for n, c in builtin.items() if not issubclass(c, TextMethod)} == IMAGE_METHODS


def test_help_imports_no_torch():
    """`textdiffusion --help` answers without torch (0.08 s instead of 1.8 s on the 2-core machine)."""
    import subprocess
    import sys

    code = ("import sys\nfrom textdiffusion.apps.cli import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_progress_bars_stay_quiet_in_a_log():
    """A bar written to a file (not a terminal) redraws at most every 15 s: 2,000 quick updates are a couple
    of lines, where tqdm's own default would write one per 0.1 s."""
    import io

    from textdiffusion.progress import LOG_INTERVAL_S, progress_bar

    log = io.StringIO()
    with progress_bar(total=2000, desc="job", file=log) as bar:
        for _ in range(2000):
            bar.update(1)
    assert bar.mininterval == LOG_INTERVAL_S
    assert log.getvalue().count("\r") + log.getvalue().count("\n") <= 3
    assert "2000/2000" in log.getvalue()  # the final state is always written
