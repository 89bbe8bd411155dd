"""The SENECA cost model: the published 1.9x, monotonicity, scaling, profiles, sparsity input and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise

import pytest
import yaml

from thresh_opt.cli import main
from thresh_opt.errors import ConfigError, UserError
from thresh_opt.hardware import (
    DEFAULT_PROFILE,
    WORK_KINDS,
    HardwareProfile,
    ModelDims,
    compare,
    estimate,
    linear_sites,
    load_profile,
    sites_from_placement,
)

RWKV_KINDS = ["att.key", "att.receptance", "att.value", "att.output", "ffn.receptance", "ffn.key", "ffn.value"]
OPT_KINDS = ["qkv", "fc1", "fc2"]
# design.md 1.4: RWKV-4 3B, dense and thresholded at loss_inc 1.0005
RWKV3B = ModelDims("rwkv4", layers=32, hidden=2560)
RWKV3B_DENSE = {"ffn.value": 0.930}
RWKV3B_THRESHOLDED = {"att.key": 0.616, "att.value": 0.487, "att.receptance": 0.495, "att.output": 0.737,
                      "ffn.key": 0.386, "ffn.receptance": 0.559, "ffn.value": 0.937}


def profile_with(**changes: float) -> HardwareProfile:
    """The shipped profile with some constants changed, e.g. energy_pj__synop=5.0."""
    data = load_profile().model_dump()
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name]["value"] = value
    return HardwareProfile.model_validate(data)


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---- validation against the paper ---------------------------------------------------------------
def test_rwkv3b_gains_come_out_at_1_9():
    cmp = compare(RWKV3B, RWKV3B_THRESHOLDED, RWKV3B_DENSE)
    assert 1.8 <= cmp.energy_gain <= 2.0
    assert 1.8 <= cmp.latency_gain <= 2.0
    # it comes from the synaptic operations: their ratio is the non-zero MAC ratio of design.md (~1.93)
    synop_ratio = cmp.baseline.counts["synops"] / cmp.thresholded.counts["synops"]
    assert synop_ratio == pytest.approx(1.93, abs=0.01)
    assert cmp.energy_gain == pytest.approx(synop_ratio, abs=0.1)
    shares = {k: v.energy_j / cmp.baseline.energy_j for k, v in cmp.baseline.per_work.items()}
    assert max(shares, key=shares.get) == "synops" and shares["synops"] > 0.5


def test_breakdowns_add_up_to_the_total():
    sparsity = {"fc2": 0.9, "qkv": 0.3}
    est = estimate(ModelDims("opt", layers=3, hidden=128, context=64, vocab=1000), sparsity)
    for parts in (est.per_work.values(), est.per_kind.values()):
        assert sum(c.energy_j for c in parts) == pytest.approx(est.energy_j)
        assert sum(c.latency_s for c in parts) == pytest.approx(est.latency_s)
    assert set(est.per_work) == set(WORK_KINDS)
    assert est.counts["weight_loads"] == est.counts["synops"]
    # the head, the embedding and the final norm sit outside every block
    without_head = estimate(ModelDims("opt", layers=3, hidden=128, context=64), sparsity)
    assert len(est.per_block) == 3
    assert sum(c.energy_j for c in est.per_block) == pytest.approx(without_head.energy_j)
    assert est.energy_j > without_head.energy_j


# ---- monotonicity -------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "kinds"), [("rwkv4", RWKV_KINDS), ("opt", OPT_KINDS)])
def test_more_sparsity_never_costs_more(arch, kinds):
    dims = ModelDims(arch, layers=2, hidden=256, context=128)
    for kind in kinds:
        costs = [estimate(dims, {**dict.fromkeys(kinds, 0.3), kind: s}) for s in (0.0, 0.2, 0.5, 0.9, 1.0)]
        for before, after in pairwise(costs):
            assert after.energy_j < before.energy_j and after.latency_s < before.latency_s
            assert after.per_kind[kind].energy_j < before.per_kind[kind].energy_j
            assert after.per_kind[kind].latency_s < before.per_kind[kind].latency_s
            others = [k for k in before.per_kind if k != kind]
            assert all(after.per_kind[k] == before.per_kind[k] for k in others)


def test_full_module_names_override_kinds():
    dims = ModelDims("rwkv4", layers=2, hidden=64)
    est = estimate(dims, {"att.key": 0.5, "blocks.1.att.key": 0.9})
    by_name = {s.name: s.sparsity for s in est.sites}
    assert by_name["blocks.0.att.key"] == 0.5 and by_name["blocks.1.att.key"] == 0.9
    assert by_name["blocks.0.ffn.key"] == 0.0  # not given: dense
    one = estimate(dims, {"blocks.1.att.key": 0.9})
    assert estimate(dims).energy_j > one.energy_j > est.energy_j


# ---- scaling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["rwkv4", "opt"])
def test_cost_grows_with_width_and_depth(arch):
    small = estimate(ModelDims(arch, layers=4, hidden=512, context=256))
    wide = estimate(ModelDims(arch, layers=4, hidden=1024, context=256))
    deep = estimate(ModelDims(arch, layers=8, hidden=512, context=256))
    # the linear part is quadratic in width; events cost more than that because a wider map sits on
    # more cores and every event visits each of them
    assert wide.counts["synops"] == pytest.approx(4 * small.counts["synops"])
    assert wide.per_work["synops"].energy_j == pytest.approx(4 * small.per_work["synops"].energy_j)
    assert 3.0 < wide.energy_j / small.energy_j < 8.0
    assert wide.latency_s > small.latency_s
    # depth: twice the blocks, twice the energy, and twice the cores, so the same time per token
    assert deep.energy_j == pytest.approx(2 * small.energy_j)
    assert deep.cores == 2 * small.cores
    assert deep.latency_s == pytest.approx(small.latency_s)
    assert deep.per_block[5].energy_j == small.per_block[1].energy_j


def test_context_drives_opt_attention_not_rwkv():
    short, long = (estimate(ModelDims("opt", layers=2, hidden=256, context=n)) for n in (128, 1024))
    assert long.per_work["attention"].energy_j == pytest.approx(8 * short.per_work["attention"].energy_j, rel=0.01)
    assert long.energy_j > short.energy_j and long.latency_s > short.latency_s
    assert long.per_work["synops"].energy_j == short.per_work["synops"].energy_j
    assert long.cores > short.cores  # the key/value cache needs data memory too
    r_short, r_long = (estimate(ModelDims("rwkv4", layers=2, hidden=256, context=n)) for n in (128, 1024))
    assert r_short.energy_j == r_long.energy_j and r_short.latency_s == r_long.latency_s


def test_head_is_counted_only_with_a_vocabulary():
    without = estimate(ModelDims("rwkv4", layers=2, hidden=64), {"ffn.value": 0.9})
    with_head = estimate(ModelDims("rwkv4", layers=2, hidden=64, vocab=512), {"ffn.value": 0.9})
    assert "head" not in without.per_kind and with_head.per_kind["head"].energy_j > 0
    with pytest.raises(UserError, match="head"):
        estimate(ModelDims("rwkv4", layers=2, hidden=64, vocab=512), {"head": 0.5})  # never thresholded


def test_opt_sites_follow_design_md():
    sites = {s.kind: s for s in linear_sites(ModelDims("opt", layers=1, hidden=64))}
    assert (sites["qkv"].n_in, sites["qkv"].n_out) == (64, 192)
    assert (sites["fc1"].n_in, sites["fc1"].n_out, sites["fc2"].n_in) == (64, 256, 256)
    assert not sites["out_proj"].thresholded


# ---- profiles -----------------------------------------------------------------------------------
def test_shipped_profile_names_a_source_for_every_constant():
    for name, c in load_profile().constants().items():
        assert "Tang et al. 2023" in c.source or c.source.startswith("assumption"), name


def test_profile_override_changes_the_result(tmp_path):
    base = estimate(RWKV3B, RWKV3B_THRESHOLDED)
    assert estimate(RWKV3B, RWKV3B_THRESHOLDED, profile_with(energy_pj__synop=5.6)).energy_j > base.energy_j
    faster = estimate(RWKV3B, RWKV3B_THRESHOLDED, profile_with(core__clock_hz=400e6))
    assert faster.latency_s == pytest.approx(base.latency_s / 2) and faster.energy_j == base.energy_j
    data = yaml.safe_load(DEFAULT_PROFILE.read_text())
    data["core"]["data_memory_bits"]["value"] *= 2
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(data))
    assert estimate(RWKV3B, profile=load_profile(path)).cores < estimate(RWKV3B).cores


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["energy_pj"]["synop"].pop("source"), "energy_pj.synop.source"),
        (lambda d: d["energy_pj"]["synop"].update(value="cheap"), "energy_pj.synop.value"),
        (lambda d: d["core"]["npes"].update(value=0), "core.npes"),
        (lambda d: d["core"].pop("clock_hz"), "core.clock_hz"),
        (lambda d: d["work"].update(speed={"value": 1, "source": "assumption"}), "work.speed"),
    ],
)
def test_malformed_profile_names_file_and_field(tmp_path, edit, field):
    data = yaml.safe_load(DEFAULT_PROFILE.read_text())
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert exc.value.source == str(path) and exc.value.field == field


# ---- sparsity input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"att.kye": 0.5}, r"unknown module 'att.kye'; allowed: a module kind \(att.key, "),
        ({"blocks.9.att.key": 0.5}, "unknown module 'blocks.9.att.key'"),
        ({"ffn.key": 1.5}, "ffn.key: 1.5 is not a sparsity; allowed: a number from 0 to 1"),
        ({"ffn.key": "half"}, "ffn.key: 'half' is not a sparsity"),
        ({"ffn.key": True}, "ffn.key: True is not a sparsity"),
    ],
)
def test_bad_sparsity_is_a_user_error(given, message):
    with pytest.raises(UserError, match=message) as exc:
        estimate(ModelDims("rwkv4", layers=2, hidden=64), given, source="s.json")
    assert str(exc.value).startswith("s.json: ")


def test_bad_dimensions_are_user_errors():
    with pytest.raises(UserError, match="allowed: rwkv4, opt"):
        ModelDims("gpt2", layers=2, hidden=64)
    with pytest.raises(UserError, match="hidden=0"):
        ModelDims("opt", layers=2, hidden=0)


# ---- command line -------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    thr, base = tmp_path / "thr.json", tmp_path / "base.json"
    thr.write_text(json.dumps(RWKV3B_THRESHOLDED))
    base.write_text(json.dumps(RWKV3B_DENSE))
    return thr, base


def test_cli_arch_json(capsys, files):
    thr, base = files
    code, out, _ = run_cli(capsys, "hardware", "estimate", "--arch", "rwkv4", "--layers", "32", "--hidden", "2560",
                           "--sparsity", str(thr), "--baseline", str(base), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["dims"]["layers"] == 32 and result["baseline_file"] == str(base)
    assert 1.8 <= result["gains"]["energy"] <= 2.0 and 1.8 <= result["gains"]["latency"] <= 2.0
    assert result["baseline"]["energy_j"] > result["thresholded"]["energy_j"]
    assert len(result["thresholded"]["per_block"]) == 32 and "att.key" in result["thresholded"]["per_kind"]


def test_cli_table_goes_to_stderr(capsys, files):
    thr, _ = files
    code, out, err = run_cli(capsys, "hardware", "estimate", "--arch", "opt", "--layers", "2", "--hidden", "64",
                             "--context", "32", "--sparsity", str(thr.with_name("opt.json")))
    assert code == 2 and "no such sparsity file" in err  # first a missing file
    thr.with_name("opt.json").write_text(json.dumps({"fc2": 0.9}))
    code, out, err = run_cli(capsys, "hardware", "estimate", "--arch", "opt", "--layers", "2", "--hidden", "64",
                             "--context", "32", "--sparsity", str(thr.with_name("opt.json")))
    assert code == 0 and out == ""
    assert "energy gain" in err and "fc2" in err and "attention" in err


def test_cli_model(capsys, tmp_path, rwkv):
    path = tmp_path / "s.json"
    # the output of `thresh-opt model sparsity --json` is accepted as it is
    path.write_text(json.dumps({"per_module": {"blocks.0.ffn.value": 0.9}, "mac_weighted": 0.1}))
    code, out, _ = run_cli(capsys, "hardware", "estimate", "--model", "embedded:rwkv4-tiny", "--sparsity", str(path),
                           "--head", "--json")
    assert code == 0
    result = json.loads(out)
    cfg = rwkv.model.config
    assert result["dims"] == {"arch": "rwkv4", "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                              "ffn": cfg.intermediate_size, "context": None, "heads": None, "vocab": cfg.vocab_size}
    assert result["gains"]["energy"] > 1.0 and "head" in result["thresholded"]["per_kind"]
    dims = ModelDims("rwkv4", cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)
    assert sites_from_placement(rwkv.thresholded.sites, dims) == linear_sites(dims)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("{not json", [], "not valid JSON"),
        ('{"att.kye": 0.5}', [], "unknown module 'att.kye'"),
        ('{"ffn.key": 1.5}', [], "ffn.key: 1.5 is not a sparsity"),
        ("{}", ["--profile", "missing.yaml"], "missing.yaml: (file): no such file"),
        ("{}", ["--vocab", "10", "--model", "embedded:rwkv4-tiny"], "not allowed with argument --arch"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path, content, args, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    argv = ["hardware", "estimate", "--arch", "rwkv4", "--layers", "2", "--hidden", "64",
            "--sparsity", str(path), *args]
    if "--model" in args:
        with pytest.raises(SystemExit) as exc:  # argparse: --model and --arch exclude each other
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
        return
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_model_rejects_dimension_options(capsys, tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{}")
    code, _, err = run_cli(capsys, "hardware", "estimate", "--model", "embedded:rwkv4-tiny", "--layers", "3",
                           "--sparsity", str(path))
    assert code == 2 and "--layers: taken from the model" in err


def test_the_hardware_model_needs_no_torch_or_models():
    code = ("import sys, thresh_opt.hardware; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('thresh_opt.models', 'thresh_opt.cli'))]; "
            "sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
