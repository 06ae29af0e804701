"""Is the fused NLL kernel bound by memory or by arithmetic? The same pass over unembeddings that fit in cache or not.

    python benchmarks/nll_bound.py [--rows 10] [--vocab 2048 16384 262144] [--bf16]

For ``--rows`` random hidden rows of width 640 (Gemma 3 270M's) and a random unembedding of each ``--vocab``
rows (fp32, or bf16 with ``--bf16``, as the bf16 option reads it), it calls ``headsteer_nll`` over and
over on the machine's threads and prints the time per call, scaled to 262,144 vocabulary rows (Gemma's),
and the multiply-adds per second (two products of rows × vocab × 640). A 2,048-row W stays in the cores'
caches between calls; Gemma's whole W streams from memory every call. Equal times per row mean the kernel
is bound by its arithmetic, the memory's time hidden under it; compare the rate with
``benchmarks/cpu_peak.py``. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from headsteer.kernels import library, split_scratch

WIDTH, GEMMA_VOCAB = 640, 262_144


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--vocab", type=int, nargs="+", default=[2048, 16384, GEMMA_VOCAB])
    parser.add_argument("--bf16", action="store_true", help="a bf16 W, widened as the kernel reads it")
    args = parser.parse_args()
    kernels = library()
    if isinstance(kernels, str):
        raise SystemExit(f"kernels {kernels}")
    threads, rows = torch.get_num_threads(), args.rows
    h = torch.randn(rows, WIDTH) * 0.05
    m, z, s = torch.empty(threads, rows), torch.empty(threads, rows), torch.empty(threads, rows, WIDTH)
    split = split_scratch(rows, WIDTH)
    print(f"{threads} threads, {rows} rows, width {WIDTH}, W in {'bf16' if args.bf16 else 'fp32'}")
    print("| vocab rows | W MiB | ms per call | ms per 262,144 rows | G multiply-adds/s |\n|--:|--:|--:|--:|--:|")
    for vocab in args.vocab:
        weight = torch.randn(vocab, WIDTH) * 0.05
        weight = weight.to(torch.bfloat16) if args.bf16 else weight

        def call(weight: torch.Tensor = weight, vocab: int = vocab) -> None:
            m.fill_(-torch.inf)
            z.zero_()
            s.zero_()
            pointers = (h.data_ptr(), weight.data_ptr(), None, rows, WIDTH, vocab, threads)
            kernels.nll(*pointers, m.data_ptr(), z.data_ptr(), s.data_ptr(), int(args.bf16), split.data_ptr())

        repeats = max(3, GEMMA_VOCAB * 20 // vocab)  # about 20 passes over Gemma's vocabulary in all
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        seconds = (time.perf_counter() - start) / repeats
        mib = weight.numel() * weight.element_size() / 2**20
        rate = 2 * rows * vocab * WIDTH / seconds / 1e9
        print(f"| {vocab} | {mib:.1f} | {seconds * 1e3:.3f} | {seconds * GEMMA_VOCAB / vocab * 1e3:.1f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
