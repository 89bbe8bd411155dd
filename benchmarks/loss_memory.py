"""Peak memory of a calibration-loss pass with and without the batch's full-vocabulary logits.

    python benchmarks/loss_memory.py [--folder runs/rwkv4-169m-random] [--count 8] [--ctx-len 1024] [--batch 8]

On the random-weight RWKV-4 with RWKV-4 169M's dimensions (saved by `hub_shaped_study.py`, or here when the
folder is missing), each way in its own process: a thresholded loss pass over the calibration batch with
the head applied to the whole batch (the model's logits, 8 x 1,024 x 50,277 float32 = 1.6 GB) against the
head applied a slice at a time to its input (`thresh_opt.models.head`). Prints peak resident memory,
seconds and the loss of each (they must agree).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hub_shaped_study import REPO, TEXT, save_model

PASS = """
import json, resource, sys, time, torch
from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.models import load_model
from thresh_opt.models.prefix import PrefixRunner
loaded = load_model(sys.argv[1])
chunks = calibration_chunks(loaded, CalibrationSpec(source=sys.argv[2], ctx_len=int(sys.argv[3]),
                                                    count=int(sys.argv[4])))
runner = PrefixRunner(loaded.thresholded, chunks, batch_size=int(sys.argv[5]), sliced_head=sys.argv[6] == "sliced")
began = time.perf_counter()
loss = runner.run().loss
print(json.dumps({"seconds": time.perf_counter() - began, "loss": loss, "sliced": runner.head.sliced,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    """Both ways side by side."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=REPO / "runs" / "rwkv4-169m-random")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--ctx-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    if not (args.folder / "config.json").is_file():
        save_model(args.folder)
    rows = {}
    for way in ("whole", "sliced"):
        out = subprocess.run([sys.executable, "-c", PASS, str(args.folder), str(TEXT), str(args.ctx_len),
                              str(args.count), str(args.batch), way], check=True, capture_output=True, text=True).stdout
        rows[way] = json.loads(out.strip().splitlines()[-1])
    print(f"{'head':8} {'peak MB':>8} {'seconds':>8} {'loss':>10}")
    for way, r in rows.items():
        print(f"{way:8} {r['peak_mb']:8.0f} {r['seconds']:8.1f} {r['loss']:10.6f}")
    whole, sliced = rows["whole"], rows["sliced"]
    print(f"sliced/whole: {sliced['peak_mb'] / whole['peak_mb']:.2f}x peak memory "
          f"({whole['peak_mb'] - sliced['peak_mb']:.0f} MB less), {sliced['seconds'] / whole['seconds']:.2f}x time; "
          f"loss difference {abs(sliced['loss'] - whole['loss']):.2e}; shortcut taken: {sliced['sliced']}")


if __name__ == "__main__":
    main()
