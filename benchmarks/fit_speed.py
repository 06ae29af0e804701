"""headsteer's fits against the loop a researcher writes by hand, naive vs prefix-cached, sequential vs batched.

    python benchmarks/fit_speed.py [--steps 10] [--task antonym] [--seeds 5] [--cases hand fast fast-bf16 ...]
        [--kind bridge|hooked] [--dtype float32|bfloat16] [--device cpu|cuda]

Each case runs in its own process (so its peak resident memory is its own)
on the same model, data and layer, and prints one table:

* single fit, the hand-written loop (``hand``: the plain Hugging Face model, loaded on its own with its
  default attention, no bridge around it; a forward pre-hook on layer 4's ``o_proj`` adding Δ at the
  last prompt token, Adam on the first-token NLL, full forwards)
  vs headsteer's prefix-cached fit (``fast``; ``fast-bf16`` with the optional bf16 weights):
  steps per second over the whole fit (set-up included: the prefix, the plan, bf16 copies) and the median
  time of a step (the first two left out), and the ratios of each;
* single fit, naive full forward vs prefix-cached: seconds per step, ratio;
* single fit, the sequence loss (every answer token and the stop) vs the first-token loss, both prefix-cached;
  and with the bf16 option (``fast-bf16-sequence``);
* a layer sweep (every layer × ``--seeds`` samples): sequential naive or hand-written fits
  (timed on ``--sequential`` of them) vs one batched prefix-cached pass,
  in fit-steps per second, and the ratio;
* ``figure1``: the paper's Figure-1 sweep end to end (``headsteer.paper.sweep``: every layer ×
  ``--seeds``, 100 held-out pairs scored per seed, the defaults' 50 steps whatever ``--steps``), in seconds;
* peak resident memory (model included) of each, and on CUDA the peak GPU memory.

``--kind hooked`` runs the same fits on a HookedTransformer of the same weights
(TransformerLens 3.x; unprocessed, from the converted default model).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace

import torch

from headsteer.fitting.forward import PrefixCachedForward

CASES = (
    "hand",
    "fast",
    "fast-bf16",
    "naive",
    "fast-sequence",
    "fast-bf16-sequence",
    "sequential-naive",
    "sequential-hand",
    "batched-fast",
)
OPT_IN = ("figure1",)  # minutes long: run only when named in --cases
LAYER = 4  # the single fits' layer


def hand_fit(
    hf, tokenizer, pairs, template, layer: int, steps: int, gamma: float, lam: float, lr: float
) -> list[float]:
    """The loop a researcher writes by hand: Δ added by a pre-hook on ``o_proj``, Adam, full forwards.

    ``o_proj``'s input is the heads' outputs concatenated (``hook_z`` flattened), so adding Δ there at the
    last prompt token is headsteer's intervention; the penalty is γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂ inside Adam's loss.
    Returns the time at which each step began.
    """
    from headsteer.prompts import encode_targets

    tokens, targets = encode_targets(tokenizer, template, pairs)
    device = hf.device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    rows, last = torch.arange(len(pairs), device=device), tokens.last_index.to(device)
    first = targets.target_ids[:, 0].to(device)  # the answer's first token
    config = hf.config.get_text_config()
    n_heads, d_head = config.num_attention_heads, config.head_dim
    delta = torch.zeros(n_heads * d_head, device=device, requires_grad=True)

    def add_delta(module, args):
        (z,) = args
        added = torch.zeros_like(z)
        added[rows, last] = delta.to(z.dtype)
        return (z + added,)

    optimizer = torch.optim.Adam([delta], lr=lr)
    for p in hf.parameters():
        p.requires_grad_(False)
    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(add_delta)
    began = []
    try:
        for step in range(steps + 1):  # as headsteer: steps updates, then the fitted Δ's loss without a gradient
            began.append(time.perf_counter())
            with torch.set_grad_enabled(step < steps):
                logits = hf(input_ids=ids, attention_mask=mask).logits
                nll = -torch.log_softmax(logits[rows, last].float(), -1)[rows, first].mean()
                heads = delta.view(n_heads, d_head)
                loss = nll + gamma * heads.abs().sum() + lam * heads.norm(dim=-1).sum()
            if step < steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        handle.remove()
    return began


class TimedForward(PrefixCachedForward):
    """headsteer's prefix-cached forward, noting when each call (one per fit step, rows in one chunk) began."""

    def __init__(self, bf16_weights: bool) -> None:
        super().__init__(bf16_weights=bf16_weights)
        self.began: list[float] = []

    def __call__(self, model, layer, tokens, delta, n_scored):
        self.began.append(time.perf_counter())
        return super().__call__(model, layer, tokens, delta, n_scored)


def step_ms(began: list[float]) -> float:
    """The median time between successive steps, the first two left out (set-up, warm-up); NaN with too few."""
    gaps = sorted(b - a for a, b in itertools.pairwise(began[2:]))
    return 1e3 * gaps[len(gaps) // 2] if gaps else float("nan")


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


def load_plain(dtype: str, device: str):
    """The default model as a plain Hugging Face causal LM (no bridge around it; its default attention), and the
    tokenizer headsteer uses (so both loops see the same tokens)."""
    from transformers import AutoModelForCausalLM

    from headsteer import models

    files = models.open_model(placement=models.Placement(device, dtype))
    hf = AutoModelForCausalLM.from_pretrained(files.source, dtype=files.placement.torch_dtype).to(device)
    return hf.eval(), files.tokenizer


def case(args: argparse.Namespace) -> dict:
    import headsteer as hs
    from headsteer.fitting.forward import naive_scored_logits
    from headsteer.fitting.loop import FitJob, fit_many
    from headsteer.paper.sweep import sweep

    name, steps, task, seeds, sequential = args.case, args.steps, args.task, args.seeds, args.sequential
    if name in ("hand", "sequential-hand"):  # the hand-written loop's own model: no bridge in the way
        hf, tokenizer = load_plain(args.dtype, args.device)
        n_layers = hf.config.get_text_config().num_hidden_layers
    else:
        model = load(args.kind, args.dtype, args.device)
        n_layers = model.cfg.n_layers
    loaded, template = hs.load_task(task), hs.get_template("qa")
    train = lambda seed: tuple(hs.split_task(loaded, n_train=10, seed=seed)[0])  # noqa: E731
    config = lambda layer, seed: hs.FitConfig(layer=layer, seed=seed, steps=steps)  # noqa: E731
    start = time.perf_counter()
    penalty = config(0, 0).gamma, config(0, 0).lam
    hand = lambda layer: hand_fit(hf, tokenizer, train(0), template, layer, steps, *penalty, 0.01)  # noqa: E731
    began: list[float] = []  # when each step of a single fit began
    if name in ("naive", "fast", "fast-bf16", "fast-sequence", "fast-bf16-sequence"):
        timed = None if name == "naive" else TimedForward(bf16_weights="bf16" in name)
        loss = "sequence" if name.endswith("sequence") else "first_token"
        forward = naive_scored_logits if timed is None else timed
        hs.fit(model, train(0), template, replace(config(LAYER, 0), loss=loss), forward=forward, progress=False)
        fits, began = 1, [] if timed is None else timed.began
    elif name == "hand":
        began = hand(LAYER)
        fits = 1
    elif name in ("sequential-naive", "sequential-hand"):
        layers = range(0, n_layers, max(1, n_layers // sequential))[:sequential]
        for layer in layers:
            if name == "sequential-hand":
                hand(layer)
            else:
                hs.fit(model, train(0), template, config(layer, 0), forward=naive_scored_logits, progress=False)
        fits = len(layers)
    elif name == "figure1":
        sweep(model, loaded, template, range(model.cfg.n_layers), range(seeds), progress=False)
        fits, steps = model.cfg.n_layers * seeds, hs.FitConfig().steps
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
        "step_ms": step_ms(began),
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
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES + OPT_IN,
        default=list(CASES),
        help=f"the cases to run, in order (default: all but {', '.join(OPT_IN)})",
    )
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
    print("| case | fits | wall s | fit-steps/s | step ms | peak RSS GiB | peak GPU GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows.values():
        print(
            f"| {r['case']} | {r['fits']} | {r['seconds']:.1f} | {r['fit_steps_per_s']:.2f} | {r['step_ms']:.1f} "
            f"| {r['peak_gib']:.2f} | {r['gpu_gib']:.2f} |"
        )
    ratios = (
        ("hand", "fast", "single fit, fast / hand-written loop steps per second", "goal 5x"),
        ("hand", "fast-bf16", "single fit, fast with bf16 weights / hand-written loop", "goal 10x"),
        ("naive", "fast", "single fit, fast / naive steps per second", "target 2.5x"),
        (
            "sequential-naive",
            "batched-fast",
            "layer sweep, batched fast / sequential naive fit-steps per second",
            "target 8x",
        ),
        (
            "sequential-hand",
            "batched-fast",
            "layer sweep, batched fast / sequential hand-written fit-steps per second",
            "",
        ),
        ("fast-sequence", "fast", "sequence-loss step time / first-token step time", "target at most 2x"),
        ("fast-sequence", "fast-bf16-sequence", "sequence loss, fast with bf16 weights / fast", ""),
    )
    for slow, fast, what, target in ratios:
        if slow in rows and fast in rows:
            note = f" ({target})" if target else ""
            per_step = rows[slow]["step_ms"] / rows[fast]["step_ms"]  # NaN where a case times no single fit's steps
            step = "" if per_step != per_step else f"; per step (median, set-up left out) {per_step:.2f}x"
            print(f"{what}: {rows[fast]['fit_steps_per_s'] / rows[slow]['fit_steps_per_s']:.2f}x{step}{note}")


if __name__ == "__main__":
    main()
