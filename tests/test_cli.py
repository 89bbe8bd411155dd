"""The command line: JSON output, tables, and clear errors with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from thresh_opt.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_model_info_json_is_one_object(capsys, rwkv):
    code, out, _ = run_cli(capsys, "model", "info", "embedded:rwkv4-tiny", "--json")
    assert code == 0
    info = json.loads(out)
    d = rwkv.model.config.hidden_size
    assert info["arch"] == "rwkv4" and len(info["modules"]) == len(rwkv.thresholded.names)
    first = {m["kind"]: m for m in info["modules"] if m["block"] == 0}
    assert first["ffn.value"]["macs"] == 4 * d * d and first["att.key"]["macs"] == d * d
    assert sum(m["mac_weight"] for m in info["modules"]) == pytest.approx(1.0)


def test_model_info_table(capsys):
    code, out, err = run_cli(capsys, "model", "info", "embedded:opt-tiny")
    assert code == 0 and out == ""
    assert "layers.0.qkv" in err and "thresholded MACs per token" in err


def test_model_sparsity_uniform_json(capsys):
    code, out, _ = run_cli(capsys, "model", "sparsity", "embedded:rwkv4-tiny", "--uniform-sparsity", "0.5",
                           "--chunks", "4", "--json")
    assert code == 0
    result = json.loads(out)
    assert 0.45 < result["mac_weighted"] < 0.75
    assert result["loss_ratio"] > 1.0 and result["dense_heldout_loss"] < result["heldout_loss"]
    assert set(result["per_kind"]) == {"att.key", "att.receptance", "att.value", "att.output",
                                       "ffn.receptance", "ffn.key", "ffn.value"}
    assert result["tokens"] == 4 * 128


def test_model_sparsity_from_a_thresholds_file(capsys, tmp_path, opt):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(dict.fromkeys(opt.thresholded.names, 0.0)))
    _, out, _ = run_cli(capsys, "model", "sparsity", "embedded:opt-tiny", "--thresholds", str(path), "--chunks", "2",
                        "--json")
    dense = json.loads(out)
    path.write_text(json.dumps({"layers.0.fc1": 10.0}))
    _, out, _ = run_cli(capsys, "model", "sparsity", "embedded:opt-tiny", "--thresholds", str(path), "--chunks", "2",
                        "--json")
    sparse = json.loads(out)
    assert sparse["per_module"]["layers.0.fc1"] > 0.99 > dense["per_module"]["layers.0.fc1"]
    assert sparse["thresholds"]["layers.0.fc1"] == 10.0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[0.1, 0.2]", "holds a JSON object"),
        ('{"blocks.0.att.kee": 0.1}', "unknown module name 'blocks.0.att.kee'"),
        ('{"blocks.0.att.key": -1}', "finite numbers >= 0"),
    ],
)
def test_bad_thresholds_files_exit_2_with_one_line(capsys, tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run_cli(capsys, "model", "sparsity", "embedded:rwkv4-tiny", "--thresholds", str(path))
    assert code == 2 and out == ""
    assert match in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["model", "sparsity", "embedded:rwkv4-tiny", "--uniform-sparsity", "1.5"], "allowed 0 to 0.99"),
        (["model", "info", "embedded:nope"], "unknown embedded model"),
        (["model", "sparsity", "embedded:rwkv4-tiny", "--thresholds", "/no/such.json"], "no such thresholds file"),
        (["evaluate", "embedded:rwkv4-tiny", "--uniform-sparsity", "0.1", "--tasks", "/no/such/folder"],
         "folder /no/such/folder does not exist"),
        (["evaluate", "embedded:rwkv4-tiny", "--uniform-sparsity", "0.1", "--objectives", "accuracy", "--tasks",
          "/no/such/folder"], "folder /no/such/folder does not exist"),
    ],
)
def test_bad_input_exits_2(capsys, args, match):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and match in err


def test_tasks_without_an_objective_that_runs_them_exit_2(capsys, tmp_path):
    folder = tmp_path / "piqa"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n')
    code, out, err = run_cli(capsys, "evaluate", "embedded:rwkv4-tiny", "--uniform-sparsity", "0.1",
                             "--tasks", str(folder))
    assert code == 2 and out == ""
    assert "no objective runs them: add 'accuracy' to the objectives" in err and str(folder) in err


def test_console_script_usage_error_and_help():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([sys.executable, "-m", "thresh_opt", "model", "sparsity", "embedded:rwkv4-tiny"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "one of the arguments --uniform-sparsity --thresholds is required" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "thresh_opt", "model", "--help"], capture_output=True, text=True,
                        env=env, timeout=120)
    assert ok.returncode == 0 and "sparsity" in ok.stdout and "train" in ok.stdout
