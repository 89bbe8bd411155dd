"""Ordinary lm-eval task YAMLs: given as files, found on include paths, in study files, and their errors."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from thresh_opt.cli import main
from thresh_opt.errors import ConfigError, UserError
from thresh_opt.objectives.lm_eval_tasks import LmEvalRunner, parse_task

TASK_YAML = """\
task: my_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/sums.jsonl
test_split: test
output_type: multiple_choice
process_docs: !function utils.keep_all
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
UTILS = "def keep_all(dataset):\n    return dataset\n"
FAST = ["--uniform-sparsity", "0.3", "--count", "2", "--ctx-len", "32", "--json"]


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    """A folder with 20 two-choice sums in data/sums.jsonl, a task YAML over them and its utils.py; the
    working directory is elsewhere, so the data file must be found beside the YAML."""
    rng = random.Random(0)
    rows = []
    for _ in range(20):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        choices = [str(a + b), str(a + b + rng.randint(1, 3))]
        rng.shuffle(choices)
        rows.append({"question": f"What is {a} plus {b}?", "choices": choices, "label": choices.index(str(a + b))})
    folder = tmp_path / "tasks"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.yaml").write_text(TASK_YAML)
    (folder / "utils.py").write_text(UTILS)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


def evaluate(capsys, *args):
    code = main(["evaluate", "embedded:rwkv4-tiny", "--objectives", "accuracy", "--cache-dir", "cache", *FAST, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_task_yaml_runs_through_the_cli(capsys, task_dir):
    code, out, err = evaluate(capsys, "--tasks", str(task_dir / "task.yaml"), "--limit", "6")
    assert code == 0, err
    result = json.loads(out)
    metrics = result["tasks"]["my_sums"]
    assert set(metrics) >= {"acc", "acc_norm"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # the headline metric is the first of the metric_list; with limit 6, a multiple of 1/6
    assert result["objectives"]["accuracy"] == metrics["acc_norm"]
    assert metrics["acc_norm"] * 6 == pytest.approx(round(metrics["acc_norm"] * 6))


def test_include_path_makes_the_task_loadable_by_name(capsys, task_dir):
    code, out, err = evaluate(capsys, "--include-path", str(task_dir), "--tasks", "my_sums", "--limit", "4")
    assert code == 0, err
    result = json.loads(out)
    assert result["objectives"]["accuracy"] == result["tasks"]["my_sums"]["acc_norm"]
    assert 0.0 <= result["objectives"]["accuracy"] <= 1.0


def test_runner_counts_examples_and_mixes_with_folders(rwkv, task_dir, shared_data):
    runner = LmEvalRunner(rwkv.model, rwkv.tokenizer, [str(task_dir / "task.yaml"), str(shared_data / "piqa")], limit=5)
    try:
        results = runner.evaluate()
    finally:
        runner.close()
    assert set(results) == {"my_sums", "piqa"}
    assert runner.samples == {"my_sums": 5, "piqa": 5}
    assert [r.metric for r in runner.refs] == ["acc_norm", "acc"]
    runner = LmEvalRunner(rwkv.model, rwkv.tokenizer, [str(task_dir / "task.yaml")])
    try:
        runner.evaluate()
    finally:
        runner.close()
    assert runner.samples == {"my_sums": 20}  # no limit: the whole file


def test_data_files_are_resolved_beside_the_yaml_then_in_the_working_directory(task_dir, tmp_path):
    ref = parse_task(str(task_dir / "task.yaml"))
    assert ref.name == "my_sums" and ref.metric == "acc_norm"
    assert ref.dataset_kwargs == {"data_files": {"test": str(task_dir / "data" / "sums.jsonl")}}
    (tmp_path / "cwd" / "data").mkdir()
    (tmp_path / "cwd" / "data" / "other.jsonl").write_text("{}\n")
    moved = task_dir / "cwd.yaml"
    moved.write_text(TASK_YAML.replace("data/sums.jsonl", "data/other.jsonl"))
    assert parse_task(str(moved)).dataset_kwargs["data_files"]["test"] == str(tmp_path / "cwd" / "data" / "other.jsonl")
    # no metric_list: lm-eval's default for the output type (and .yml works too)
    bare = task_dir / "bare.yml"
    bare.write_text(TASK_YAML[: TASK_YAML.index("metric_list:")])
    assert parse_task(str(bare)).metric == "acc"


def test_study_file_resolves_task_files_and_include_paths(task_dir, tmp_path):
    from thresh_opt.study.config import load_study

    study = task_dir.parent / "study.yaml"
    study.write_text(yaml.safe_dump({
        "model": {"source": "embedded:rwkv4-tiny"}, "calibration": {"ctx_len": 32, "count": 2},
        "objectives": [{"name": "accuracy"}, {"name": "sparsity"}],
        "tasks": ["tasks/task.yaml", "my_sums_too"], "include_path": ["extra"], "limit": 3,
    }))
    (task_dir.parent / "extra").mkdir()
    (task_dir.parent / "extra" / "too.yaml").write_text(f"include: {task_dir / 'task.yaml'}\ntask: my_sums_too\n")
    cfg, _ = load_study(study)
    assert cfg.tasks == [str(task_dir / "task.yaml"), "my_sums_too"]
    assert cfg.include_path == [str(task_dir.parent / "extra")]
    # front-only metrics use the same tasks
    study.write_text(yaml.safe_dump({"objectives": [{"name": "loss_ratio"}], "front_metrics": ["accuracy"],
                                     "tasks": ["tasks/task.yaml"]}))
    assert load_study(study)[0].tasks == [str(task_dir / "task.yaml")]
    study.write_text(yaml.safe_dump({"objectives": [{"name": "accuracy"}], "tasks": ["tasks/nope.yaml"]}))
    with pytest.raises(ConfigError, match=r"study.yaml: tasks: task file .*tasks/nope.yaml does not exist"):
        load_study(study)
    study.write_text(yaml.safe_dump({"objectives": [{"name": "accuracy"}], "tasks": ["x"], "include_path": ["nope"]}))
    with pytest.raises(ConfigError, match=r"study.yaml: include_path.0: .*nope is not a folder"):
        load_study(study)


def test_front_metric_accuracy_on_a_task_yaml_in_a_study(task_dir, capsys):
    study = task_dir.parent / "front.yaml"
    study.write_text(yaml.safe_dump({
        "name": "front", "run_dir": str(task_dir.parent / "run"), "model": {"source": "embedded:rwkv4-tiny"},
        "calibration": {"ctx_len": 32, "count": 2}, "search_space": {"grouping": "all", "levels": "linear"},
        "objectives": [{"name": "loss_ratio"}, {"name": "sparsity"}], "sampler": {"name": "random"}, "trials": 2,
        "baselines": {"dense": True, "uniform": []}, "front_metrics": ["accuracy"], "front_points": 1,
        "tasks": ["tasks/task.yaml"], "limit": 3,
    }))
    assert main(["study", "run", str(study)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["study", "show", str(task_dir.parent / "run"), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    values = [row["front:accuracy"] for row in front if "front:accuracy" in row]
    assert values and all(0.0 <= v <= 1.0 for v in values)


BAD = {  # case: (file text, what the one line says)
    "unknown_key": (TASK_YAML.replace("doc_to_text:", "doc_to_txt:"),
                    "bad.yaml: unknown key 'doc_to_txt' (did you mean 'doc_to_text'?); "
                    "allowed: the fields of lm-eval's TaskConfig"),
    "no_task": (TASK_YAML.replace("task: my_sums\n", ""), "bad.yaml: no 'task:' field"),
    "no_data": (TASK_YAML.replace("data/sums.jsonl", "data/missing.jsonl"),
                "bad.yaml: dataset_kwargs.data_files: data/missing.jsonl does not exist"),
    "syntax": ("task: broken\ndataset_path: json\ndoc_to_text: [unclosed\nmetric_list: []\n",
               "bad.yaml:4: not valid YAML: expected ',' or ']', but got ':' "
               "(while parsing a flow sequence from line 3)"),
    "include": ("include: nowhere.yaml\ntask: broken\n", "bad.yaml: include nowhere.yaml: no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_task_files_exit_2_with_one_line(capsys, task_dir, case):
    text, match = BAD[case]
    (task_dir / "bad.yaml").write_text(text)
    code, out, err = evaluate(capsys, "--tasks", str(task_dir / "bad.yaml"))
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert match in err and str(task_dir / "bad.yaml") in err
    with pytest.raises(UserError, match=r"bad\.yaml"):
        parse_task(str(task_dir / "bad.yaml"))
    study = task_dir.parent / "study.yaml"
    study.write_text(yaml.safe_dump({"objectives": [{"name": "accuracy"}], "tasks": ["tasks/bad.yaml"]}))
    assert main(["study", "run", str(study)]) == 2
    err = capsys.readouterr().err
    assert f"{study}: tasks: " in err and match in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--tasks", "missing.yaml"], "task file missing.yaml does not exist"),
        (["--include-path", "no_such_dir", "--tasks", "my_sums"], "--include-path no_such_dir: not a folder"),
    ],
)
def test_missing_file_and_include_path_exit_2(capsys, task_dir, args, match):
    code, out, err = evaluate(capsys, *args)
    assert code == 2 and out == "" and match in err and len(err.strip().splitlines()) == 1
