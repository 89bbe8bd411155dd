"""Storage cost of a trial in the run folder's journal: Optuna's JournalFileBackend (a sync to disk per
line) against thresh-opt's (a sync per trial state change), measured side by side in one run.

    python benchmarks/journal_sync.py [--trials 60] [--params 42] [--rounds 3]

Each trial writes what a module-grouped greedy trial on the embedded RWKV-4 model writes: `--params`
parameters (42: 6 blocks x 7 modules), 13 system attributes (the sampler's stamps) and 19 user
attributes (objectives, costs, thresholds), then its state and values. Rounds alternate between the two
backends, so machine noise hits both; the medians per trial and their ratio are printed. The storage's
reads (replaying the file) are the same for both and are included.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from thresh_opt import compat


def one_study(storage: JournalStorage, trials: int, params: int) -> float:
    """Seconds per trial of a study writing `trials` greedy-shaped trials to `storage`."""
    study = optuna.create_study(storage=storage, directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        for i in range(13):
            compat.set_trial_system_attr(study, trial, f"stamp:{i}", {"value": i})
        for i in range(params):
            trial.suggest_categorical(f"blocks.{i // 7}.m{i % 7}", [0.0, 0.3, 0.6, 0.9])
        for i in range(19):
            trial.set_user_attr(f"attr{i}", float(i))
        study.tell(trial, [1.0, 0.5])
    return (time.perf_counter() - start) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--params", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times: dict[str, list[float]] = {"optuna (sync per line)": [], "thresh-opt (sync per trial)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label in times:
                path = Path(tmp) / f"{r}-{len(times[label])}-{label[:5]}.journal"
                storage = (JournalStorage(JournalFileBackend(str(path))) if label.startswith("optuna")
                           else compat.journal_storage(path))
                times[label].append(one_study(storage, args.trials, args.params))
    med = {label: statistics.median(v) for label, v in times.items()}
    for label, v in med.items():
        print(f"{label:30s} {1000 * v:7.1f} ms per trial")
    plain, ours = med.values()
    print(f"ratio thresh-opt / optuna: {ours / plain:.2f}x  ({args.trials} trials x {args.params} parameters, "
          f"median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
