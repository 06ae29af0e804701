"""This CPU's peak rate of 512-bit fp32 FMAs and of avx512_bf16 dot products, per core and on every thread.

    python benchmarks/cpu_peak.py [--threads 1 2]

It compiles a small C loop with the machine's C compiler (``$CC``, else ``cc``; OpenMP) and runs it:
24 independent accumulators in registers (the loop unrolled), so that neither instruction waits on its
own latency, and nothing but the instruction in the loop. It prints billions of instructions a second:
``vfmadd231ps`` does 16 multiply-adds, ``vdpbf16ps`` 32 (pairs of bf16 products into 16 fp32 sums), so
the second is faster only where its rate is more than half the first's. These are the ceilings the
kernels of :mod:`headsteer.kernels` are measured against (RESEARCH.md). Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#define N 24
__attribute__((target("avx512f,avx512bf16"))) static double rate(int bf16, long n) {
    __m512 acc[N];
    for (int i = 0; i < N; i++) acc[i] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1e-9f);
    __m512bh b = (__m512bh)_mm512_set1_epi16(1);
    double start = omp_get_wtime();
    if (bf16)
        for (long i = 0; i < n; i++)
#pragma GCC unroll 32
            for (int j = 0; j < N; j++) acc[j] = _mm512_dpbf16_ps(acc[j], b, b);
    else
        for (long i = 0; i < n; i++)
#pragma GCC unroll 32
            for (int j = 0; j < N; j++) acc[j] = _mm512_fmadd_ps(x, x, acc[j]);
    double seconds = omp_get_wtime() - start;
    float sum = 0;
    for (int j = 0; j < N; j++) sum += _mm512_reduce_add_ps(acc[j]);
    if (sum == 1234.5f) puts(""); /* keeps the loop */
    return n * N / seconds / 1e9;
}
int main(int argc, char **argv) {
    int threads = atoi(argv[1]), kinds = argc > 2 ? 2 : 1; /* a second argument: this CPU has avx512_bf16 */
    for (int bf16 = 0; bf16 < kinds; bf16++) {
        double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        total += rate(bf16, 100000000L);
        printf("%s %d %.2f\n", bf16 ? "vdpbf16ps" : "vfmadd231ps", threads, total);
    }
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source, binary = Path(folder) / "peak.c", Path(folder) / "peak"
        source.write_text(SOURCE)
        compiler = os.environ.get("CC", "cc")
        subprocess.run([compiler, "-O3", "-fopenmp", str(source), "-o", str(binary)], check=True)
        print("| instruction | threads | G instructions/s, all threads | G multiply-adds/s |\n|:--|--:|--:|--:|")
        flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
        if "avx512_bf16" not in flags:
            print("(this CPU has no avx512_bf16: fp32 FMAs only)")
        for threads in args.threads:
            command = [str(binary), str(threads), *(["bf16"] if "avx512_bf16" in flags else [])]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            for name, count, rate in (row.split() for row in out.strip().splitlines()):
                lanes = 32 if name == "vdpbf16ps" else 16
                print(f"| {name} | {count} | {float(rate):.2f} | {float(rate) * lanes:.1f} |")


if __name__ == "__main__":
    main()
