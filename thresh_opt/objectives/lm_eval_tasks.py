"""Zero-shot accuracy with lm-eval on the in-process (thresholded) model: hub tasks, local JSON Lines, or
ordinary lm-eval task YAMLs (given as files, or found by name on include paths)."""

from __future__ import annotations

import difflib
import glob
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from thresh_opt.errors import UserError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
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
TASK_FILE_SUFFIXES = (".yaml", ".yml")
# Keys of a task file besides lm-eval's TaskConfig fields: the ones lm-eval's loader and factory consume.
STRUCTURAL_KEYS = ("include", "group", "task_list", "class")


@dataclass(frozen=True)
class TaskRef:
    """A task by lm-eval name: on the hub dataset, on a local folder of JSON Lines, or from a user task file.

    Args:
        name: the lm-eval task name (a user file's `task:` field).
        folder: a local folder of JSON Lines that replaces a built-in task's data.
        yaml: a user task file (given directly, or found by name on an include path).
        headline: the headline metric of a user task (the first of its metric_list).
        dataset_kwargs: a user task's dataset_kwargs with its data_files made absolute (None: unchanged).
    """

    name: str
    folder: Path | None = None
    yaml: Path | None = None
    headline: str | None = None
    dataset_kwargs: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def metric(self) -> str:
        """The headline metric of this task: a user task's first metric, else the paper's (default acc)."""
        return self.headline or PAPER_METRIC.get(self.name, "acc")


def check_include_path(paths: Iterable[str | Path]) -> tuple[Path, ...]:
    """The include folders, resolved; a clear error for one that is not a folder."""
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_dir():
            raise UserError(f"include path {p} is not a folder")
        out.append(path.resolve())
    return tuple(out)


def parse_task(text: str, include_path: Iterable[str | Path] = ()) -> TaskRef:
    """'piqa' (hub, or a task on an include path), a task file ('my_task.yaml'), a folder named after its task
    ('../shared/data/piqa'), or 'piqa=/path/to/folder'."""
    if "=" in text:
        name, folder = text.split("=", 1)
        return _local(name, Path(folder))
    path = Path(text)
    if path.suffix.lower() in TASK_FILE_SUFFIXES:
        return load_task_file(path)
    if path.is_dir() or "/" in text:
        return _local(path.name, path)
    dirs = check_include_path(include_path)
    entry = _user_index(dirs).get(text) if dirs else None
    if entry is None:
        return TaskRef(text)
    if entry.yaml_path is None or entry.kind.name not in ("TASK", "PY_TASK"):
        kind = entry.kind.name.lower()
        raise UserError(f"task {text!r} on the include path is a {kind}, not a task: give its tasks by name")
    return load_task_file(Path(entry.yaml_path))


def _local(name: str, folder: Path) -> TaskRef:
    if not folder.is_dir():
        raise UserError(f"task {name!r}: folder {folder} does not exist")
    if not any((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        raise UserError(f"task {name!r}: {folder} holds no {', '.join(s + '.jsonl' for s in SPLITS)}")
    return TaskRef(name, folder)


# ---- user task files ------------------------------------------------------------------------------------
class _TaskFileLoader(yaml.SafeLoader):
    """Safe YAML with lm-eval's `!function module.name` tag kept as text (nothing is imported to validate)."""


def _function_tag(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return f"!function {loader.construct_scalar(node)}"


_TaskFileLoader.add_constructor("!function", _function_tag)


@cache
def allowed_task_keys() -> tuple[str, ...]:
    """Top-level keys a task file may have: lm-eval's TaskConfig fields and its structural keys."""
    from dataclasses import fields

    from lm_eval.api.task import TaskConfig

    return (*(f.name for f in fields(TaskConfig)), *STRUCTURAL_KEYS)


def _read_task_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One task file with its includes merged as lm-eval merges them (included first, local keys win);
    every file of the chain is checked for YAML syntax, unknown keys and missing data files (which are
    made absolute)."""
    if not path.is_file():
        raise UserError(f"task file {path} does not exist")
    path = path.resolve()
    if path in seen:
        raise UserError(f"task file {path}: include cycle through {seen[-1]}")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskFileLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({context} from line {start.line + 1})"
        raise UserError(f"{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"task file {path}: cannot be read ({exc})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: a task file holds a mapping of task settings, not {type(cfg).__name__}")
    allowed = allowed_task_keys()
    for key in cfg:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UserError(f"{path}: unknown key {key!r}{hint}; allowed: the fields of lm-eval's TaskConfig "
                            f"({', '.join(allowed[: -len(STRUCTURAL_KEYS)])}) and {', '.join(STRUCTURAL_KEYS)}")
    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("data_files") is not None:  # relative to the file that names them
        cfg["dataset_kwargs"] = {**kwargs, "data_files": _resolve_data_files(kwargs["data_files"], path.parent, path)}
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(str(inc)).expanduser()
        inc_path = inc_path if inc_path.is_absolute() else path.parent / inc_path
        if not inc_path.is_file():
            raise UserError(f"{path}: include {inc}: no such file {inc_path}")
        inc_cfg = _read_task_file(inc_path, (*seen, path))
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    return merged | cfg


def _resolve_data_files(value: Any, base: Path, source: Path) -> Any:
    """data_files with every relative entry made absolute: against the folder of the task file that names
    them first, then the working directory (where datasets looks); remote entries are left alone."""
    if isinstance(value, dict):
        return {k: _resolve_data_files(v, base, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_data_files(v, base, source) for v in value]
    text = str(value)
    if "://" in text:
        return text
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [base / path, Path.cwd() / path]
    for c in candidates:
        if glob.has_magic(text):  # a pattern: datasets expands it
            if glob.glob(str(c)):
                return str(c.absolute())
        elif c.exists():
            return str(c.resolve())
    where = "" if path.is_absolute() else f" (looked in {base} and in the working directory {Path.cwd()})"
    raise UserError(f"{source}: dataset_kwargs.data_files: {text} does not exist{where}")


def load_task_file(path: Path) -> TaskRef:
    """The task of an ordinary lm-eval task file, checked: YAML, keys, `task:`, local data files."""
    cfg = _read_task_file(Path(path).expanduser())
    path = Path(path).expanduser().resolve()
    name = cfg.get("task")
    if not isinstance(name, str) or not name:
        if isinstance(name, list) or "group" in cfg:
            raise UserError(f"{path}: a group file (task: is a list); give a task file, "
                            "or each task by name with --include-path")
        raise UserError(f"{path}: no 'task:' field; a task file names its task (task: my_task)")
    metrics = cfg.get("metric_list") or []
    if metrics and isinstance(metrics[0], dict) and metrics[0].get("metric"):
        headline = str(metrics[0]["metric"])
    else:
        from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

        headline = DEFAULT_METRIC_REGISTRY.get(str(cfg.get("output_type", "generate_until")), ["acc"])[0]
    kwargs = cfg.get("dataset_kwargs")
    has_files = isinstance(kwargs, dict) and kwargs.get("data_files") is not None
    return TaskRef(name, yaml=path, headline=headline, dataset_kwargs=kwargs if has_files else None)


def _quiet() -> None:
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


@cache
def _user_index(dirs: tuple[Path, ...]) -> dict[str, Any]:
    """lm-eval's index (name -> Entry) of the tasks, groups and tags in these folders only."""
    from lm_eval.tasks import TaskManager

    _quiet()
    return TaskManager(include_defaults=False, include_path=[str(d) for d in dirs]).task_index


@cache
def _builtin_manager() -> TaskManager:
    """lm-eval's task manager over its built-in tasks (indexing them takes seconds: built once)."""
    from lm_eval.tasks import TaskManager

    _quiet()
    return TaskManager()


def _builtin_yaml(name: str) -> Path:
    entry = _builtin_manager().task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise UserError(f"task {name!r} is not an lm-eval task: a local folder needs an lm-eval task name "
                        "to take its prompts from")
    return Path(entry.yaml_path)


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


def user_task_yaml(ref: TaskRef) -> dict[str, Any]:
    """A task config that includes the user's file (so its includes and `!function`s resolve beside it) and
    gives its data files as absolute paths."""
    assert ref.yaml is not None
    out: dict[str, Any] = {"include": str(ref.yaml), "task": ref.name}
    if ref.dataset_kwargs is not None:
        out["dataset_kwargs"] = ref.dataset_kwargs
    return out


class LmEvalRunner:
    """Evaluates lm-eval tasks on one loaded model, many times: the task set and wrapper are built once.

    Example:
        >>> runner = LmEvalRunner(model, tokenizer, ["../shared/data/piqa", "my_task.yaml"], limit=9)  # doctest: +SKIP
        >>> runner.evaluate()                                                                        # doctest: +SKIP
        {'piqa': {'acc': 0.61, 'acc_norm': 0.60}, 'my_task': {'acc': 0.55}}

    Args:
        model: the in-process model (its thresholds apply: lm-eval calls it directly).
        tokenizer: its tokenizer.
        tasks: task names, task files (.yaml/.yml), local folders, or NAME=FOLDER.
        limit: the first N examples of every task (the same for every evaluation).
        batch_size: lm-eval batch size.
        include_path: folders whose task files make their tasks loadable by name (lm-eval's include_path).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tasks: list[str],
        limit: int | None = None,
        batch_size: int = 16,
        include_path: Iterable[str | Path] = (),
    ) -> None:
        if not tasks:
            raise UserError("no lm-eval tasks given")
        self.include_path = check_include_path(include_path)
        self.refs = [parse_task(t, self.include_path) for t in tasks]
        self.limit = limit
        self.samples: dict[str, int] = {}  # examples evaluated per task, after each evaluate()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._dir = tempfile.TemporaryDirectory(prefix="thresh-opt-tasks-")
        for i, ref in enumerate(self.refs):
            if ref.folder is not None or ref.yaml is not None:
                config = local_task_yaml(ref) if ref.folder is not None else user_task_yaml(ref)
                (Path(self._dir.name) / f"{i:02d}-{ref.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    @cached_property
    def _lm(self) -> Any:
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=self.batch_size)

    @cached_property
    def _tasks(self) -> dict[str, Any]:
        from lm_eval.tasks import TaskManager

        _quiet()
        local = [r.name for r in self.refs if r.folder is not None or r.yaml is not None]
        hub = [r.name for r in self.refs if r.folder is None and r.yaml is None]
        out: dict[str, dict[str, Any]] = {"tasks": {}, "groups": {}, "group_map": {}}
        try:
            parts = []
            if local:  # the generated files come last: they win over the user's originals on the include path
                paths = [*map(str, self.include_path), self._dir.name]
                manager = TaskManager(include_defaults=False, include_path=paths)
                parts.append(manager.load(local))
            if hub:
                parts.append(_builtin_manager().load(hub))
        except Exception as exc:  # noqa: BLE001 - offline hub, unknown task: one line for the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"lm-eval tasks {', '.join(r.name for r in self.refs)}: {first}") from None
        for part in parts:
            for key, merged in out.items():
                merged.update(part.get(key, {}))
        return out

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Every metric of every task on the model as it is now (thresholds included)."""
        from lm_eval.evaluator import evaluate

        _quiet()
        out = evaluate(lm=self._lm, task_dict=self._tasks, limit=self.limit, bootstrap_iters=0, verbosity="ERROR")
        results = {}
        for ref in self.refs:
            raw = out["results"][ref.name]
            results[ref.name] = {k.split(",")[0]: float(v) for k, v in raw.items()
                                 if "," in k and "stderr" not in k and isinstance(v, (int, float))}
        self.samples = {name: int(n["effective"]) for name, n in out.get("n-samples", {}).items() if "effective" in n}
        return results

    def close(self) -> None:
        """Remove the generated task files."""
        self._dir.cleanup()
