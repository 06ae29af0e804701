"""Naive vs prefix-cached fitting, and sequential vs batched fits, measured side by side.

    python benchmarks/fit_speed.py [--steps 10] [--task antonym] [--seeds 5] [--cases fast fast-sequence ...]
        [--kind bridge|hooked] [--dtype float32|bfloat16] [--device cpu|cuda]

Each case runs in its own process (so its peak resident memory is its own)
on the same model, data and layer, and prints one table:

* single fit, naive full forward vs prefix-cached: seconds per step, ratio;
* single fit, the sequence loss (every answer token and the stop) vs the first-token loss, both prefix-cached;
* a layer sweep (every layer × ``--seeds`` samples): sequential naive fits
  (timed on ``--sequential`` of them) vs one batched prefix-cached pass,
  in fit-steps per second, and the ratio;
* peak resident memory (model included) of each, and on CUDA the peak GPU memory.

``--kind hooked`` runs the same fits on a HookedTransformer of the same weights
(TransformerLens 3.x; unprocessed, from the converted default model).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace

import torch

CASES = ("naive", "fast", "fast-sequence", "sequential-naive", "batched-fast")


def load(kind: str, dtype: str, device: str):
    """The default model as a TransformerBridge, or as a HookedTransformer of the same converted weights."""
    import headsteer as hs
    from headsteer import models

    if kind == "bridge":
        return hs.load_model(device=device, dtype=dtype)
    from transformer_lens import HookedTransformer

    files = models.open_model(placement=models.Placement(device, dtype))
    return HookedTransformer.from_pretrained_no_processing(
        hs.DEFAULT_MODEL,
        hf_model=models.load_weights(files),
        tokenizer=files.tokenizer,
        device=device,
        dtype=files.placement.torch_dtype,
    )


def case(args: argparse.Namespace) -> dict:
    import headsteer as hs
    from headsteer.fitting.forward import naive_scored_logits
    from headsteer.fitting.loop import FitJob, fit_many

    name, steps, task, seeds, sequential = args.case, args.steps, args.task, args.seeds, args.sequential
    model = load(args.kind, args.dtype, args.device)
    loaded, template = hs.load_task(task), hs.get_template("qa")
    train = lambda seed: tuple(hs.split_task(loaded, n_train=10, seed=seed)[0])  # noqa: E731
    config = lambda layer, seed: hs.FitConfig(layer=layer, seed=seed, steps=steps)  # noqa: E731
    start = time.perf_counter()
    if name in ("naive", "fast", "fast-sequence"):
        forward = naive_scored_logits if name == "naive" else None
        loss = "sequence" if name == "fast-sequence" else "first_token"
        hs.fit(model, train(0), template, replace(config(4, 0), loss=loss), forward=forward, progress=False)
        fits = 1
    elif name == "sequential-naive":
        layers = range(0, model.cfg.n_layers, max(1, model.cfg.n_layers // sequential))[:sequential]
        for layer in layers:
            hs.fit(model, train(0), template, config(layer, 0), forward=naive_scored_logits, progress=False)
        fits = len(layers)
    else:
        jobs = [FitJob(train(s), config(layer, s)) for layer in range(model.cfg.n_layers) for s in range(seeds)]
        fit_many(model, jobs, template, progress=False)
        fits = len(jobs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu_gib = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    # steps + 1 forward/backward passes per fit (the last evaluates the returned Δ)
    return {
        "case": name,
        "fits": fits,
        "seconds": seconds,
        "fit_steps_per_s": fits * (steps + 1) / seconds,
        "peak_gib": peak_gib,
        "gpu_gib": gpu_gib,
    }


def run_case(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", name, "--steps", str(args.steps), "--task", args.task]
    cmd += ["--seeds", str(args.seeds), "--sequential", str(args.sequential), "--kind", args.kind]
    cmd += ["--dtype", args.dtype, "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--task", default="antonym")
    parser.add_argument("--seeds", type=int, default=5, help="training samples per layer in the batched sweep")
    parser.add_argument("--sequential", type=int, default=3, help="naive fits timed for the sequential baseline")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="the cases to run, in order")
    parser.add_argument("--kind", choices=["bridge", "hooked"], default="bridge", help="hooked: TransformerLens 3.x")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return
    gpu = f", {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads{gpu}, "
        f"torch {torch.__version__}; {args.kind} on {args.device} in {args.dtype}; "
        f"task {args.task}, N=10, {args.steps} steps per fit"
    )
    rows = {name: run_case(name, args) for name in args.cases}
    print("| case | fits | wall s | fit-steps/s | peak RSS GiB | peak GPU GiB |\n|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        print(
            f"| {r['case']} | {r['fits']} | {r['seconds']:.1f} | {r['fit_steps_per_s']:.2f} | {r['peak_gib']:.2f} "
            f"| {r['gpu_gib']:.2f} |"
        )
    ratios = (
        ("naive", "fast", "single fit, fast / naive steps per second", "target 2.5x"),
        (
            "sequential-naive",
            "batched-fast",
            "layer sweep, batched fast / sequential naive fit-steps per second",
            "target 8x",
        ),
        ("fast-sequence", "fast", "sequence-loss step time / first-token step time", "target at most 2x"),
    )
    for slow, fast, what, target in ratios:
        if slow in rows and fast in rows:
            print(f"{what}: {rows[fast]['fit_steps_per_s'] / rows[slow]['fit_steps_per_s']:.2f}x ({target})")


if __name__ == "__main__":
    main()
