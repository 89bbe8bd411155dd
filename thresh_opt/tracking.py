"""MLflow tracking: one parent run per study, a nested run per trial, study artifacts; logged from the driver."""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from thresh_opt import keys
from thresh_opt.errors import UserError

PACKAGES = ("thresh-opt", "torch", "transformers", "optuna", "ray", "mlflow", "lm_eval")

# The MLflow UI's experiment type tag; "custom_model_development" is its "Machine learning" (training runs) kind, as
# opposed to "genai_development" (traces). MLflow 3.17's UI picks the landing view from its sidebar workflow switch
# (`?workflowType=machine_learning` in the address, else the browser's last choice, GenAI by default), not from this
# tag, so `thresh-opt ui` prints an address that carries it; the tag records the kind for the UIs that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def default_tracking_uri(run_dir: Path) -> str:
    """SQLite in the run folder."""
    return f"sqlite:///{(run_dir / keys.MLFLOW_DB).resolve()}"


def git_commit() -> str:
    """The repository's commit, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class _Tracker:
    """An MLflow experiment with one parent run (found again by its role tag when resuming)."""

    role = "study"

    def __init__(self, tracking_uri: str | None, run_dir: Path, name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or default_tracking_uri(run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = None if tracking_uri else (run_dir / "mlartifacts").resolve().as_uri()
                exp_id = self.client.create_experiment(name, artifact_location=location,
                                                       tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
            else:
                exp_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag was set: set it, keep any other kind
                    self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        except Exception as exc:  # noqa: BLE001 - unreachable server, bad URI: one line
            raise UserError(f"MLflow tracking URI {self.uri!r}: {str(exc).splitlines()[0]}") from None
        self.experiment_id = exp_id
        parents = self.client.search_runs([exp_id], f"tags.thresh_opt_role = '{self.role}'", max_results=1)
        if parents:
            self.parent = parents[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
        else:
            run = self.client.create_run(exp_id, run_name=name, tags={"thresh_opt_role": self.role})
            self.parent = run.info.run_id

    def children(self) -> list[Any]:
        """The nested runs of the parent."""
        return self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent}'",
                                       max_results=50000)

    def log_artifacts(self, files: list[Path], metrics: dict[str, float] | None = None, folder: str = "study") -> None:
        """Artifacts (plots, front, report) and summary metrics on the parent run."""
        for f in files:
            self.client.log_artifact(self.parent, str(f), folder)
        for k, v in (metrics or {}).items():
            self.client.log_metric(self.parent, k, float(v))

    def finish(self, status: str = "FINISHED") -> None:
        """Close the parent run."""
        self.client.set_terminated(self.parent, status=status)


class StudyTracker(_Tracker):
    """Logs a study to MLflow; resuming a study reuses its parent run and skips trials already logged.

    Trials are logged by one background thread, in order, so that the driver does not wait for MLflow
    between trials; every other call first waits until they are written (and raises the first error the
    thread met), so that only one thread ever writes to the tracking store.

    Args:
        tracking_uri: any MLflow tracking URI (an `mlflow server` too); SQLite in run_dir when None.
        run_dir: the study's run folder (artifacts go under it for the local default).
        study_name: MLflow experiment and parent run name.
    """

    def __init__(self, tracking_uri: str | None, run_dir: Path, study_name: str) -> None:
        super().__init__(tracking_uri, run_dir, study_name)
        self.logged = {int(r.data.tags["trial_number"]): r.info.run_id for r in self.children()
                       if "trial_number" in r.data.tags}
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._log_trial(*item)
            except BaseException as exc:  # noqa: BLE001 - raised in the driver by the next flush
                self._error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def flush(self) -> None:
        """Wait until every trial handed over is logged; raise the first error met."""
        if self._thread is not None:
            self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise UserError(f"MLflow tracking URI {self.uri!r}: {str(error).splitlines()[0]}") from error

    def log_artifacts(self, files: list[Path], metrics: dict[str, float] | None = None, folder: str = "study") -> None:
        """Artifacts and summary metrics on the parent run (after the trials handed over)."""
        self.flush()
        super().log_artifacts(files, metrics, folder)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the parent run (after the trials handed over) and stop the logging thread."""
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            self.client.set_terminated(self.parent, status=status)

    def log_study(self, study_file: Path | None, cfg: dict[str, Any], sampler: str, seed: int) -> None:
        """Parameters of the parent run: the study file, sampler, seed, git commit and package versions."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.parent).data.params
        params = {"sampler": sampler, "seed": str(seed), "git_commit": git_commit(), "model": cfg["model"]["source"],
                  "trials": str(cfg["trials"]), "workers": str(cfg["workers"])}
        params |= {f"version.{k}": v for k, v in package_versions().items()}
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.parent, params=new)
        self.client.log_text(self.parent, json.dumps(cfg, indent=1), "study.json")
        if study_file is not None and study_file.is_file():
            self.client.log_artifact(self.parent, str(study_file))

    def log_trial(self, number: int, state: str, params: dict[str, float], values: dict[str, float],
                  per_module_sparsity: dict[str, float], thresholds: dict[str, float], error: str | None,
                  costs: dict[str, float] | None = None, skipped: dict[str, str] | None = None) -> None:
        """A nested run for one trial (skipped if this trial was logged before a resume): its parameters,
        objective values, per-module sparsity, cost (forward-equivalents, seconds, cache MB), the objectives
        it skipped and why (tags), and its thresholds. Handed to the logging thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="mlflow-trials", daemon=True)
            self._thread.start()
        self._queue.put((number, state, params, values, per_module_sparsity, thresholds, error, costs, skipped))

    def _log_trial(self, number: int, state: str, params: dict[str, float], values: dict[str, float],
                   per_module_sparsity: dict[str, float], thresholds: dict[str, float], error: str | None,
                   costs: dict[str, float] | None, skipped: dict[str, str] | None) -> None:
        if number in self.logged:
            return
        tags = {"trial_number": str(number), "state": state, **{f"skipped.{k}": v for k, v in (skipped or {}).items()},
                **({"error": error} if error else {})}
        self.logged[number] = self._log_run(f"trial-{number}", tags, params, {**values, **(costs or {})},
                                            per_module_sparsity, thresholds, failed=state == "FAIL")

    def _log_run(self, name: str, tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float],
                 per_module_sparsity: dict[str, float], thresholds: dict[str, float] | None, failed: bool) -> str:
        """One finished nested run: tags, parameters (repr), metrics and per-module sparsity
        (``sparsity.<module>``), ``thresholds.json``; returns its id."""
        from mlflow.entities import Metric, Param

        tags = {"mlflow.parentRunId": self.parent, **{k: v[:5000] for k, v in tags.items()}}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        now = int(time.time() * 1000)
        logged = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        logged += [Metric(f"sparsity.{k}", float(v), now, 0) for k, v in per_module_sparsity.items()]
        self.client.log_batch(run.info.run_id, metrics=logged, params=[Param(k, repr(v)) for k, v in params.items()])
        if thresholds:
            self.client.log_text(run.info.run_id, json.dumps(thresholds, indent=1), "thresholds.json")
        self.client.set_terminated(run.info.run_id, status="FAILED" if failed else "FINISHED")
        return run.info.run_id

    def log_front(self, number: int, values: dict[str, float]) -> None:
        """Metrics measured after the search on a Pareto-front trial, on that trial's run (``front.<name>``)."""
        self.flush()
        run_id = self.logged.get(number)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        from mlflow.entities import Metric

        self.client.log_batch(run_id, metrics=[Metric(f"front.{k}", float(v), now, 0) for k, v in values.items()])

    def log_refined(self, record: dict[str, Any]) -> None:
        """A nested run for a refined point (`thresh_opt.study.refine`): its setting as parameters, its
        objective values, cost and per-module sparsity as metrics, its thresholds as an artifact."""
        self.flush()
        setting = record["setting"]
        tags: dict[str, str] = {"refined_target": str(setting["target"]),
                                **{k: record[k] for k in ("skipped", "error") if k in record}}
        numbers = {**record.get("values", {}), **{k: record[k] for k in (keys.FORWARD_EQUIVALENTS, keys.SECONDS)
                                                   if k in record}}
        self._log_run(f"refined-{setting['target']}", tags, setting, numbers, record.get("per_module_sparsity", {}),
                      record.get("thresholds"), failed="error" in record)


class CompareTracker(_Tracker):
    """Logs a comparison: one parent run, a nested run per (sampler, seed) study with its hypervolume
    history and summary; resuming updates the same runs."""

    role = "compare"

    def log_compare(self, source: Path, cfg: dict[str, Any]) -> None:
        """The comparison file and settings on the parent run."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.parent).data.params
        params = {"trials": str(cfg["trials"]), "seeds": json.dumps(cfg["seeds"]), "git_commit": git_commit(),
                  "samplers": ",".join(e["label"] or e["name"] for e in cfg["samplers"])}
        params |= {f"version.{k}": v for k, v in package_versions().items()}
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.parent, params=new)
        self.client.log_text(self.parent, json.dumps(cfg, indent=1), "compare.json")
        if source.is_file():
            self.client.log_artifact(self.parent, str(source))

    def log_study(self, study: str, params: dict[str, Any], metrics: dict[str, float], history: list[float]) -> None:
        """Create or update the nested run of one study; history steps already logged are not repeated."""
        from mlflow.entities import Metric, Param

        found = [r for r in self.children() if r.data.tags.get("thresh_opt_study") == study]
        if found:
            run_id = found[0].info.run_id
            logged = len(self.client.get_metric_history(run_id, "hypervolume"))
            new_params: list[Param] = []
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=study, tags={
                "mlflow.parentRunId": self.parent, "thresh_opt_study": study}).info.run_id
            logged = 0
            new_params = [Param(k, str(v)) for k, v in params.items()]
        now = int(time.time() * 1000)
        batch = [Metric("hypervolume", float(v), now, step) for step, v in enumerate(history, 1) if step > logged]
        batch += [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, max(len(batch), 1), 900):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=batch[i : i + 900], params=new_params if i == 0 else [])
        self.client.set_terminated(run_id, status="FINISHED")


def temp_folder() -> Path:
    """A scratch folder for artifacts before they are logged."""
    return Path(tempfile.mkdtemp(prefix="thresh-opt-artifacts-"))
