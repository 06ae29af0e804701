"""How many rows each kernel should take: it against torch by row count, with fp32 weights and bf16 copies.

    python benchmarks/kernel_rows.py [--linear 10 20 32 40 48 60] [--nll 32 64 96 128 256] [--repeats 3]

On Gemma 3 270M, for each row count in ``--linear``: a forward through the linear layers of blocks 4..17
that the fitter routes through the kernel (70 layers, :mod:`headsteer.fitting.linear_kernel`) and then
their input gradients in reverse order, as a fit step's suffix runs them, after evicting the caches (a
read of 240 MB, subtracted) as the NLL's pass does in a step: the kernel on the fp32 weights, the kernel on
bf16 copies (the bf16 option), and torch's ``F.linear`` and ``g @ W`` on the fp32 weights. For each row
count in ``--nll``: the streamed NLL's pass over the unembedding (:mod:`headsteer.fitting.nll_kernel`),
the kernel and the torch loop, each on the fp32 unembedding and on its bf16 copy. Each kernel runs
whatever the row count here; the fitter sends it at most ``linear_max_rows`` and ``nll_max_rows`` rows
(``..._bf16`` with bf16 weights), torch the rest. It prints the best of ``--repeats`` in ms.
Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import headsteer as hs
from headsteer.backends import model_kind
from headsteer.fitting import unembed
from headsteer.fitting.linear_kernel import MIN_WEIGHT_ELEMENTS, kernel_forward, kernel_input_grad, plain_linears
from headsteer.kernels import Kernels, library, split_scratch


def milliseconds(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def linear_timings(rows: int, weights: list[torch.Tensor], kernels: Kernels, repeats: int) -> list[float]:
    """ms of the forwards and input gradients: the kernel on fp32 weights and on bf16 copies, torch on fp32."""
    copies = [w.to(torch.bfloat16) for w in weights]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}  # one contiguous input per width
    gs = {w.shape[0]: torch.randn(rows, w.shape[0]) for w in weights}
    evictor = torch.randn(60_000_000)  # 240 MB

    def kernel(ws: list[torch.Tensor]) -> None:
        for w in ws:
            kernel_forward(xs[w.shape[1]], w, None, kernels)
        for w in reversed(ws):
            kernel_input_grad(gs[w.shape[0]], w, kernels)

    def stock() -> None:
        for w in weights:
            torch.nn.functional.linear(xs[w.shape[1]], w)
        for w in reversed(weights):
            gs[w.shape[0]] @ w

    base = min(milliseconds(evictor.sum) for _ in range(repeats))
    cases = (lambda: kernel(weights), lambda: kernel(copies), stock)
    return [min(milliseconds(lambda f=f: (evictor.sum(), f())) for _ in range(repeats)) - base for f in cases]


def nll_timings(rows: int, weight: torch.Tensor, kernels: Kernels, repeats: int) -> list[float]:
    """ms of the NLL's pass: the kernel and the torch loop, each on the fp32 unembedding and on its bf16 copy."""
    copy = weight.to(torch.bfloat16)
    vocab, width = weight.shape
    threads = torch.get_num_threads()
    hidden = torch.randn(rows, width)
    m, z, s = torch.empty(threads, rows), torch.empty(threads, rows), torch.empty(threads, rows, width)
    split = split_scratch(rows, width)

    def kernel(w: torch.Tensor) -> None:
        m.fill_(-torch.inf)
        z.zero_()
        s.zero_()
        bf16 = w.dtype == torch.bfloat16
        pointers = (hidden.data_ptr(), w.data_ptr(), None, rows, width, vocab, threads)
        kernels.nll(*pointers, m.data_ptr(), z.data_ptr(), s.data_ptr(), bf16, split.data_ptr())

    cases = (
        lambda: kernel(weight),
        lambda: kernel(copy),
        lambda: unembed._online_softmax(hidden, weight, None, None, False),
        lambda: unembed._online_softmax(hidden, copy, None, None, True),
    )
    return [min(milliseconds(f) for _ in range(repeats)) for f in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--linear", type=int, nargs="*", default=[10, 20, 32, 40, 48, 60], help="rows, linear")
    parser.add_argument("--nll", type=int, nargs="*", default=[32, 64, 96, 128, 256], help="rows, NLL")
    parser.add_argument("--repeats", type=int, default=3, help="timings per case; the best is printed")
    args = parser.parse_args()
    kernels = library()
    if not isinstance(kernels, Kernels):
        raise SystemExit(f"the kernels are {kernels}")
    model = hs.load_model()
    weights = [m.weight.detach() for m in plain_linears(model.blocks[4:]) if m.weight.numel() >= MIN_WEIGHT_ELEMENTS]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Gemma 3 270M, ms")
    if args.linear:
        print(f"\n{len(weights)} linear layers, forwards and input gradients")
        print("| rows | kernel, fp32 | kernel, bf16 copies | torch, fp32 |\n|--:|--:|--:|--:|")
        for rows in args.linear:
            timings = linear_timings(rows, weights, kernels, args.repeats)
            print(f"| {rows} | " + " | ".join(f"{t:.1f}" for t in timings) + " |")
    if args.nll:
        unembedding = model_kind(model).unembedding(model)[0].detach().contiguous()
        print("\nthe NLL's pass over the unembedding")
        print("| rows | kernel, fp32 | kernel, bf16 copy | torch loop, fp32 | torch loop, bf16 copy |")
        print("|--:|--:|--:|--:|--:|")
        for rows in args.nll:
            timings = nll_timings(rows, unembedding, kernels, args.repeats)
            print(f"| {rows} | " + " | ".join(f"{t:.1f}" for t in timings) + " |")


if __name__ == "__main__":
    main()
