"""Zero-shot accuracy with lm-eval on the in-process (thresholded) model: hub tasks or local JSON Lines."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from thresh_opt.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The metric the paper reports per task (design.md 1.4); others are reported too.
PAPER_METRIC = {
    "piqa": "acc",
    "winogrande": "acc",
    "hellaswag": "acc_norm",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "lambada_openai": "acc",
    "openbookqa": "acc_norm",
    "sciq": "acc",
}
SPLITS = ("test", "validation", "train")


@dataclass(frozen=True)
class TaskRef:
    """A task by lm-eval name, evaluated on the hub dataset or on a local folder of JSON Lines."""

    name: str
    folder: Path | None = None

    @property
    def metric(self) -> str:
        """The headline metric of this task."""
        return PAPER_METRIC.get(self.name, "acc")


def parse_task(text: str) -> TaskRef:
    """'piqa' (hub), a folder named after its task ('../shared/data/piqa'), or 'piqa=/path/to/folder'."""
    if "=" in text:
        name, folder = text.split("=", 1)
        return _local(name, Path(folder))
    path = Path(text)
    if path.is_dir() or "/" in text:
        return _local(path.name, path)
    return TaskRef(text)


def _local(name: str, folder: Path) -> TaskRef:
    if not folder.is_dir():
        raise UserError(f"task {name!r}: folder {folder} does not exist")
    if not any((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        raise UserError(f"task {name!r}: {folder} holds no {', '.join(s + '.jsonl' for s in SPLITS)}")
    return TaskRef(name, folder)


@cache
def _builtin_yaml(name: str) -> Path:
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    for path in sorted(root.rglob("*.yaml")):
        try:
            head = path.read_text(encoding="utf-8")
        except OSError:
            continue
        if f"\ntask: {name}\n" in f"\n{head}" or head.startswith(f"task: {name}\n"):
            return path
    raise UserError(f"task {name!r} is not an lm-eval task: a local folder needs an lm-eval task name to take its prompts from")


def local_task_yaml(ref: TaskRef) -> dict[str, Any]:
    """An lm-eval task config: the built-in task's prompts and metrics, with data from the local folder."""
    assert ref.folder is not None
    split = next(s for s in SPLITS if (ref.folder / f"{s}.jsonl").is_file())
    return {
        "include": str(_builtin_yaml(ref.name)),
        "task": ref.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str((ref.folder / f"{split}.jsonl").resolve())}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
        "fewshot_split": None,
    }


class LmEvalRunner:
    """Evaluates lm-eval tasks on one loaded model, many times: the task set and wrapper are built once.

    Example:
        >>> runner = LmEvalRunner(model, tokenizer, ["../shared/data/piqa"], limit=100)  # doctest: +SKIP
        >>> runner.evaluate()                                                           # doctest: +SKIP
        {'piqa': {'acc': 0.61, 'acc_norm': 0.60}}

    Args:
        model: the in-process model (its thresholds apply: lm-eval calls it directly).
        tokenizer: its tokenizer.
        tasks: task names, local folders, or NAME=FOLDER.
        limit: the first N examples of every task (the same for every evaluation).
        batch_size: lm-eval batch size.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tasks: list[str],
        limit: int | None = None,
        batch_size: int = 16,
    ) -> None:
        if not tasks:
            raise UserError("no lm-eval tasks given")
        self.refs = [parse_task(t) for t in tasks]
        self.limit = limit
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._dir = tempfile.TemporaryDirectory(prefix="thresh-opt-tasks-")
        for ref in self.refs:
            if ref.folder is not None:
                text = yaml.safe_dump(local_task_yaml(ref), sort_keys=False)
                (Path(self._dir.name) / f"{ref.name}.yaml").write_text(text)

    @cached_property
    def _lm(self) -> Any:
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=self.batch_size)

    @cached_property
    def _tasks(self) -> dict[str, Any]:
        from lm_eval.tasks import TaskManager

        hub = any(r.folder is None for r in self.refs)
        manager = TaskManager(include_defaults=hub, include_path=self._dir.name, verbosity="ERROR")
        try:
            return manager.load([r.name for r in self.refs])
        except Exception as exc:  # noqa: BLE001 - offline hub, unknown task: one line for the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"lm-eval tasks {', '.join(r.name for r in self.refs)}: {first}") from None

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Every metric of every task on the model as it is now (thresholds included)."""
        from lm_eval.evaluator import evaluate

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        out = evaluate(lm=self._lm, task_dict=self._tasks, limit=self.limit, bootstrap_iters=0, verbosity="ERROR")
        results = {}
        for ref in self.refs:
            raw = out["results"][ref.name]
            results[ref.name] = {
                k.split(",")[0]: float(v) for k, v in raw.items() if "," in k and "stderr" not in k and isinstance(v, (int, float))
            }
        return results

    def close(self) -> None:
        """Remove the generated task files."""
        self._dir.cleanup()
