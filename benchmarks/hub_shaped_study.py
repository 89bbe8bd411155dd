"""A greedy study on a random-weight RWKV-4 with RWKV-4 169M's dimensions: cost per trial against one dense forward.

    python benchmarks/hub_shaped_study.py [--folder runs/rwkv4-169m-random] [--count 8] [--ctx-len 1024]
                                          [--loss-inc 1.0005] [--forward-equivalents FE]

Saves the model (12 blocks, d = 768, vocabulary 50,277; the embedded model's tokenizer) to a local folder
once, then, each in its own process: one bare dense forward over the calibration batch (no hooks: the
reference, with its peak resident memory), and `thresh-opt study run` with the greedy sampler, one
parameter per module, sequential statistics (peak resident memory of the whole study). Prints the
seconds and forward-equivalents per greedy trial relative to the dense forward, by block under search.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TEXT = REPO.parent / "shared" / "data" / "calibration" / "wikitext-2-raw-v1.test.txt"

FORWARD = """
import json, resource, sys, time, torch
from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.models import load_model
loaded = load_model(sys.argv[1])
chunks = calibration_chunks(loaded, CalibrationSpec(source=sys.argv[2], ctx_len=int(sys.argv[3]),
                                                    count=int(sys.argv[4])))
with loaded.thresholded.bare() as model, torch.no_grad():
    began = time.perf_counter()
    model(input_ids=chunks, use_cache=False)
    seconds = time.perf_counter() - began
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def save_model(folder: Path) -> None:
    """A random-weight RWKV-4 169M (seeded) with the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, RwkvConfig, RwkvForCausalLM

    from thresh_opt.models.loading import resolve_path

    torch.manual_seed(0)
    cfg = RwkvConfig(vocab_size=50277, hidden_size=768, num_hidden_layers=12, attention_hidden_size=768,
                     intermediate_size=3072, context_length=1024)
    RwkvForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_path("embedded:rwkv4-tiny")).save_pretrained(folder)


def main() -> None:
    """Dense forward, then the study; per-trial ratios by block."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=REPO / "runs" / "rwkv4-169m-random")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--ctx-len", type=int, default=1024)
    p.add_argument("--loss-inc", type=float, default=1.0005)
    p.add_argument("--forward-equivalents", type=float, help="stop the study after this many (default: a whole pass)")
    args = p.parse_args()
    if not (args.folder / "config.json").is_file():
        save_model(args.folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    source = str(args.folder.resolve())
    dense = json.loads(subprocess.run([sys.executable, "-c", FORWARD, source, str(TEXT), str(args.ctx_len),
                                       str(args.count)], check=True, capture_output=True, text=True, env=env).stdout)
    print(f"dense forward, {args.count} x {args.ctx_len} tokens: {dense['seconds']:.1f} s, "
          f"peak {dense['peak_mb']:.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"name": "hub-shaped", "model": {"source": source}, "run_dir": str(Path(tmp) / "run"),
               "calibration": {"source": str(TEXT), "ctx_len": args.ctx_len, "count": args.count, "seed": 0},
               "search_space": str(REPO / "search_spaces" / "rwkv4-per-module.yaml"),
               "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}],
               "sampler": {"name": "greedy", "options": {"loss_inc": args.loss_inc}}, "trials": 5000,
               "baselines": {"dense": True, "uniform": []}, "max_forward_equivalents": args.forward_equivalents}
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(cfg))
        began = time.perf_counter()
        with tempfile.TemporaryFile("w+") as stdout:
            proc = subprocess.Popen([sys.executable, "-m", "thresh_opt", "study", "run", str(path), "--json"],
                                    stdout=stdout, stderr=subprocess.DEVNULL, env=env)
            _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak resident memory
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                raise SystemExit(f"thresh-opt study run failed (exit {proc.returncode})")
            stdout.seek(0)
            out = stdout.read()
        wall = time.perf_counter() - began
        peak = usage.ru_maxrss / 1024
        from optuna import load_study
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = load_study(study_name="hub-shaped",
                           storage=JournalStorage(JournalFileBackend(str(Path(tmp) / "run" / "optuna.journal"))))
        every = study.trials
    cost = json.loads(out)["cost"]
    trials = [t for t in every if t.system_attrs.get("greedy:role") == "candidate"]
    print(f"study: {len(every)} trials ({len(trials)} candidates) in {wall:.0f} s; "
          f"trials {cost['forward_equivalents']:.1f} FE "
          f"+ {cost['reference_forward_equivalents']:.1f} FE dense reference; peak resident memory {peak:.0f} MB "
          f"(bare forward {dense['peak_mb']:.0f} MB); cache peak {cost['peak_cache_mb']:.0f} MB")
    fe = [t.user_attrs["forward_equivalents"] for t in trials]
    seconds = [t.user_attrs["seconds"] for t in trials]
    print(f"per candidate trial: {sum(fe) / len(fe):.3f} FE and {sum(seconds) / len(seconds) / dense['seconds']:.3f} "
          f"dense forwards of time (mean over {len(trials)})")
    print(f"{'block':>5} {'trials':>6} {'FE/trial':>8} {'time/dense':>10}")
    by_block: dict[int, list] = {}
    for t in trials:
        by_block.setdefault(int(t.system_attrs["greedy:module"].split(".")[1]), []).append(t)
    for b, group in sorted(by_block.items()):
        f = sum(t.user_attrs["forward_equivalents"] for t in group) / len(group)
        s = sum(t.user_attrs["seconds"] for t in group) / len(group) / dense["seconds"]
        print(f"{b:5d} {len(group):6d} {f:8.3f} {s:10.3f}")


if __name__ == "__main__":
    main()
