"""One registry for samplers, objectives and architectures; options checked when a study file loads; no
import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from thresh_opt.cli import main
from thresh_opt.errors import UserError
from thresh_opt.models.specs import builtin_specs
from thresh_opt.registry import ARCHITECTURES, OBJECTIVES, SAMPLERS, Registry

PACKAGE = Path(__file__).resolve().parents[1] / "thresh_opt"


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def _study(tmp_path: Path, sampler: dict) -> Path:
    # a model that cannot load: an error about the sampler proves the check ran first
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"model": {"source": str(tmp_path / "no-such-model")}, "sampler": sampler,
                                    "run_dir": str(tmp_path / "run"), "trials": 2}))
    return path


@pytest.mark.parametrize(("sampler", "message"), [
    ({"name": "tpe", "options": {"n_startup": 3}}, "sampler.options.n_startup: not an option of TPESampler; allowed: "),
    ({"name": "tpe", "options": {"n_startup_trials": "ten"}},
     "sampler.options.n_startup_trials: Input should be a valid integer"),
    ({"name": "nsga2", "options": {"crossover": "blx"}}, "sampler.options.crossover: takes a Python object"),
    ({"name": "greedy", "options": {"order": "sideways"}},
     "sampler.options.order: 'sideways'; allowed: forward, reverse"),
    ({"name": "hybrid", "options": {"base": "tpe", "base_options": {"population_size": 8}}},
     "sampler.options.base_options.population_size: not an option of TPESampler"),
    ({"name": "hybrid", "options": {"base": "hybrid"}}, "sampler.options.base: 'hybrid'; allowed: tpe, nsga2"),
    ({"name": "hybrid", "options": {"greedy_share": 2}},
     "sampler.options.greedy_share: Input should be less than or equal to 1"),
    ({"name": "saliency_path", "options": {"steps": "lazy", "groups": ["block", "layer"]}},
     "sampler.options.groups.1: Input should be 'block', 'family' or 'kind'"),
    ({"name": "saliency_path", "options": {"backward": -1}},
     "sampler.options.backward: Input should be greater than or equal to 0"),
    ({"name": "cmaes"}, "sampler.name: unknown sampler 'cmaes'; allowed: greedy, hybrid, tpe"),
])
def test_a_bad_sampler_option_is_rejected_before_the_model_loads(tmp_path, capsys, sampler, message):
    path = _study(tmp_path, sampler)
    code, err = _run(capsys, "study", "run", str(path))
    assert code == 2 and f"{path}: {message}" in err, err
    assert "no-such-model" not in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_good_options_pass_the_check_and_reach_the_model(tmp_path, capsys):
    path = _study(tmp_path, {"name": "tpe", "options": {"n_startup_trials": 3, "multivariate": True}})
    code, err = _run(capsys, "study", "run", str(path))
    assert code == 2 and "no-such-model" in err  # past the sampler check, stopped by the model


def test_registry_lists_allowed_names_and_refuses_a_second_declaration():
    reg: Registry[int] = Registry("thing", "thresh_opt.registry")
    reg.register("a", 1, flavour="x")
    assert reg.names() == ("a",) and reg.where(flavour="x") == ("a",) and reg["a"].target == 1
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", 2)
    with pytest.raises(UserError, match="unknown thing 'b'; allowed: a"):
        reg["b"]


def test_sampler_metadata_drives_the_study_engine():
    assert SAMPLERS.where(levels=True) == ("greedy", "hybrid", "sensitivity", "saliency_path", "blockwise", "chain")
    assert SAMPLERS.where(deterministic=True) == ("greedy", "sensitivity", "saliency_path", "blockwise")
    assert SAMPLERS.where(statistics="dense") == ("saliency_path",)  # its default statistics, declared with it
    assert set(SAMPLERS.where(hybrid_base=True)) == {"tpe", "nsga2", "nsga3", "random", "gp"}
    # the options of Optuna's samplers come from their constructors: a new Optuna option is accepted as is
    assert {"n_startup_trials", "multivariate", "constant_liar"} <= set(SAMPLERS["tpe"].options.model_fields)
    assert "constraints_func" in SAMPLERS["tpe"].meta["python_only"]


def test_every_architecture_matches_its_shipped_placement_spec():
    specs = builtin_specs()
    for entry in ARCHITECTURES:
        arch = entry.target
        assert entry.name in specs, f"{entry.name} has no placement spec"
        sites = [s.name for s in specs[entry.name].sites]
        thresholded = [k for k in arch.linear if k not in arch.dense_input]
        assert sites == thresholded and entry.meta["thresholds_per_block"] == len(sites)
        assert specs[entry.name].name_prefix == arch.block_prefix
        assert arch.hf_class in specs[entry.name].model_classes


def test_a_dimension_the_architecture_lacks_is_an_error(capsys, tmp_path):
    sparsity = tmp_path / "s.json"
    sparsity.write_text("{}")
    code, err = _run(capsys, "hardware", "estimate", "--arch", "rwkv4", "--layers", "2", "--hidden", "64",
                     "--heads", "4", "--sparsity", str(sparsity))
    assert code == 2 and "--heads: not a dimension of rwkv4; allowed: --layers, --hidden, --ffn, --vocab" in err


def _imports() -> dict[str, set[str]]:
    """thresh_opt module -> the thresh_opt modules it imports anywhere (function bodies and TYPE_CHECKING too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = owner(name) if name.startswith("thresh_opt") else None
                if target and target != module:
                    graph[module].add(target)
    return graph


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*path[path.index(n):], n] if n in path else [m, n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # the graph is real: the driver imports the samplers' factory, which does not import the study's config
    assert "thresh_opt.samplers.factory" in graph["thresh_opt.study.driver"]
    assert not any(n.startswith("thresh_opt.study") for n in graph["thresh_opt.samplers.factory"])


def test_objective_names_come_from_one_registry():
    assert "loss_ratio" in OBJECTIVES.names() and "accuracy" in OBJECTIVES.names()
