"""Names of what the study engine stores on Optuna studies and trials, declared once.

Study user attributes are prefixed ``thresh_opt:``; trial user attributes are plain (they show in
Optuna's own tools as they are).
"""

# study user attributes
BASELINES = "thresh_opt:baselines_enqueued"
DENSE = "thresh_opt:dense"  # the dense model's objective values
DENSE_SPARSITY = "thresh_opt:dense_sparsity"
FINAL = "thresh_opt:final"  # a stepped sampler's final configurations
FRONT_METRICS = "thresh_opt:front_metrics"  # trial number -> metric -> value, measured after the search
FRONT_COST = "thresh_opt:front_cost"  # forward-equivalents and seconds of those measurements
REFINED = "thresh_opt:refined"  # warm-started training from the search's points: one record per target
GROUPS = "thresh_opt:groups"  # parameter -> modules
GRADIENT_SCORES = "thresh_opt:gradient_scores"  # {"scores", "gains"}: parameter -> [[level, value], ...]
HARDWARE = "thresh_opt:hardware"
OBJECTIVES = "thresh_opt:objectives"
REFERENCE_FE = "thresh_opt:reference_forward_equivalents"  # the dense reference's passes
STATISTICS = "thresh_opt:statistics"  # how target sparsities became thresholds
CRITERION = "thresh_opt:criterion"  # what thresholds compare with: {"name", "model": the study's model section}
WORKERS = "thresh_opt:workers"  # where each Ray worker ran: node, pid, device, GPUs Ray gave it
WORKER_DEATHS = "thresh_opt:worker_deaths"  # workers lost (and replaced) over the study's runs
LEASE_PREFIX = "thresh_opt:lease:"  # + driver id (study system attribute): when that driver's lease expires
WALL_SECONDS = "thresh_opt:wall_seconds"  # a comparison study's wall time over its runs

# trial user attributes
FORWARD_EQUIVALENTS = "forward_equivalents"
SECONDS = "seconds"
CACHE_MB = "cache_mb"
DRIVER = "thresh_opt:driver"  # trial system attribute: the driver that asked for it
WORKER_LOST = "worker_lost"  # why the trial's worker died (the trial is PRUNED: abandoned, issued again)
SKIPPED = "skipped"  # objective -> why it was not computed (the trial is PRUNED)
CALIBRATION_CHUNKS = "calibration_batches"  # early rejection: calibration batches its loss was measured on
EARLY_REJECTED = "early_rejected"  # early rejection: 1 when the test rejected it before the last batch, else 0
EARLY_ACCEPTED = "early_accepted"  # early rejection: 1 when the test accepted it before the last batch, else 0
PARTIAL_LOSS = "partial_calibration_loss"  # early rejection: mean token loss over the batches measured
SALIENCY = "saliency"  # {"scores", "gains"} at the trial's configuration (a sampler asked for it)

# run folder files (runs/<study name>/ by default)
JOURNAL_FILE = "optuna.journal"  # the Optuna journal (also what optuna-dashboard reads)
MLFLOW_DB = "mlflow.db"  # the MLflow SQLite tracking store
DRIVERS_LOCK = ".drivers.lock"  # + after the journal's name: drivers of one journal take turns
PLOTS_DIR = "artifacts"  # the study's plots (also logged to MLflow)
REPORT_DIR = "report"  # a comparison's report
EXPORT_DIR = "export"  # exported trials
