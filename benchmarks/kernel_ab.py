"""Two builds of headsteer's C kernels, side by side in one process: the NLL of 10 rows and the suffix's linear layers.

    python benchmarks/kernel_ab.py SOURCES_A SOURCES_B [--repeats 8] [--bf16]

Each argument is a folder holding a copy of ``headsteer/kernels``' sources (``support.c``, ``nll.c``,
``linear.c``, ``tiles.h``), one of them changed. Both are compiled as :mod:`headsteer.kernels`
compiles its own and loaded into this process, and timed alternately on Gemma 3 270M's weights
(fp32 unless ``--bf16``): the fused NLL pass for 10 random hidden rows over the whole unembedding, then the forward
and the input gradient of every linear layer the fitter routes through the kernel in blocks 4..17
(10 rows), right after an NLL pass, as in a fit step; with ``--bf16``, bf16 copies of those weights (the
fitter's bf16 option). Alternating the builds within one process
keeps the machine's drift out of their difference, which separate runs of ``profile_step.py``
(±3% from run to run here) do not. It prints ms per repeat for each build.

Run it alone on a quiet machine: another process on the same cores changes every number.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import headsteer as hs
from headsteer import kernels
from headsteer.backends import model_kind
from headsteer.fitting.linear_kernel import MIN_WEIGHT_ELEMENTS, plain_linears

ROWS = 10


def build(sources: Path, into: Path) -> ctypes.CDLL:
    """The kernels of ``sources`` compiled and loaded as headsteer compiles and loads its own."""
    target = into / f"{sources.name}.so"
    failed = kernels.compile_sources("cc", tuple(sources / path.name for path in kernels.SOURCES), target)
    if failed:
        raise SystemExit(f"{sources}: cc failed: {failed}")
    return kernels.load(target)


def milliseconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, nargs=2, help="two folders of kernel sources")
    parser.add_argument("--repeats", type=int, default=8, help="alternations of the two builds")
    parser.add_argument("--bf16", action="store_true", help="bf16 copies of the weights, as the bf16 option reads")
    args = parser.parse_args()
    model = hs.load_model()
    weight = model_kind(model).unembedding(model)[0].detach().contiguous()
    vocab, width = weight.shape
    linears = [m.weight.detach() for m in plain_linears(model.blocks[4:]) if m.weight.numel() >= MIN_WEIGHT_ELEMENTS]
    if args.bf16:
        weight, linears = weight.to(torch.bfloat16), [w.to(torch.bfloat16) for w in linears]
    threads = torch.get_num_threads()
    widest = max(w.shape[1] for w in linears) + max(w.shape[0] for w in linears)
    h, x, g = torch.randn(ROWS, width), torch.randn(ROWS, widest), torch.randn(ROWS, widest)
    m, z, s = torch.empty(threads, ROWS), torch.empty(threads, ROWS), torch.empty(threads, ROWS, width)
    out, scratch = torch.empty(ROWS, widest), torch.empty(max(threads - 1, 1), ROWS, widest)
    split = kernels.split_scratch(ROWS, widest)  # the rows as the kernels split them for bf16 weights

    def nll(lib: ctypes.CDLL) -> None:
        m.fill_(-torch.inf)
        z.zero_()
        s.zero_()
        pointers = (h.data_ptr(), weight.data_ptr(), None, ROWS, width, vocab, threads)
        lib.headsteer_nll(*pointers, m.data_ptr(), z.data_ptr(), s.data_ptr(), int(args.bf16), split.data_ptr())

    def layers(lib: ctypes.CDLL) -> None:
        for w in linears:
            n, k = w.shape
            call = (x.data_ptr(), w.data_ptr(), None, out.data_ptr(), ROWS, k, n, threads, int(args.bf16))
            lib.headsteer_linear(*call, split.data_ptr())
        for w in reversed(linears):
            n, k = w.shape
            lib.headsteer_linear_input_grad(
                g.data_ptr(), w.data_ptr(), out.data_ptr(), ROWS, n, k, threads, scratch.data_ptr(), int(args.bf16)
            )

    with tempfile.TemporaryDirectory() as folder:
        builds = {str(path): build(path, Path(folder)) for path in args.sources}
        timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in builds}
        for _ in range(args.repeats):
            for name, lib in builds.items():
                alone = milliseconds(lambda lib=lib: nll(lib), 5)
                timings[name][0].append(alone)
                timings[name][1].append(milliseconds(lambda lib=lib: (nll(lib), layers(lib)), 3) - alone)
    precision = "bf16 copies of the weights" if args.bf16 else "fp32"
    print(f"torch {torch.__version__}, {threads} threads; Gemma 3 270M, {precision}, ", end="")
    print(f"{ROWS} rows, {len(linears)} linear layers")
    for name, (nlls, linear) in timings.items():
        print(f"{name}: NLL {' '.join(f'{t:.1f}' for t in nlls)} (mean {sum(nlls) / len(nlls):.1f}); ", end="")
        print(f"linear layers after it {' '.join(f'{t:.1f}' for t in linear)} (mean {sum(linear) / len(linear):.1f})")


if __name__ == "__main__":
    main()
