"""Where one prefix-cached fit step's time goes, and how fast this machine reads and multiplies the unembedding.

    python benchmarks/profile_step.py [--layer 4] [--rows 10 180] [--linears] [--profile]

On Gemma 3 270M (fp32, antonym, the first 10 training pairs of seed 0, frozen weights) it times, in ms:

* the whole step (suffix forward with Δ at ``--layer``, streamed first-token NLL, backward to Δ),
  with the fp32 unembedding and with the optional bf16 one, every block run; and as the fitter runs
  it, from Δ's layer on (:mod:`headsteer.fitting.from_layer`), each block's step written out by hand
  (:mod:`headsteer.fitting.fused_block`); with each block run as the model runs it, the bridge's
  hook-free components stepped around (:mod:`headsteer.fitting.bare_bridge`); and with every component;
* the fitter's step with its bf16 option (``PrefixCachedForward(bf16_weights=True)``);
* the suffix alone (forward without gradient; forward and backward; as the fitter runs it, in fp32 and with
  bf16 weights);
* the fitter's bf16 step on one thread and on all, and from the two its serial part (Python and the small
  operations between the kernels), assuming the rest scales with the threads;
* the streamed NLL alone (:mod:`headsteer.fitting.unembed`) in fp32 and bf16, as the fitter runs it (the
  fused kernel of :mod:`headsteer.fitting.nll_kernel` where it applies) and as the torch loop;
* for ``--rows`` hidden states, the two products the NLL needs (logits ``h Wᵀ`` and the gradient's
  ``softmax · W``) in fp32 and bf16, against one plain read of W (the memory-bound floor), and the
  streamed NLL as the fitter runs it against the torch loop (the fused kernel takes up to 32 rows);
* with ``--chunks``, the torch loop of the streamed NLL for ``--rows`` rows with each of these vocabulary chunks;
* with ``--kernels``, the other ways stock torch kernels can compute the NLL's two products for 10
  rows (:func:`kernels`): how close to the floor of one read of W the fp32 step can get;
* the share of the suffix's forward and backward spent in matrix products (torch's profiler);
* with ``--linears``, each shape of linear layer in blocks ``--layer``.. on 10 rows: forward, and forward with
  the input gradient, through the kernel of :mod:`headsteer.fitting.linear_kernel` and through torch, per layer,
  against one read of its weight;
* with ``--profile``, torch's operator table over three steps.

Run it alone on a quiet machine: another process on the same cores changes every number.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from unittest import mock

import torch

import headsteer as hs
from headsteer.fitting import from_layer, unembed
from headsteer.fitting.forward import PrefixCachedForward, build_prefix, run_suffix
from headsteer.fitting.unembed import FinalHidden, _StreamedNLL
from headsteer.kernels import status as kernel_status
from headsteer.prompts import encode_targets


def milliseconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Mean wall time of ``fn`` after two warm-up calls."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def products(weight: torch.Tensor, weight16: torch.Tensor, rows: int) -> dict[str, float]:
    """ms of the NLL's two products for ``rows`` random hidden states, in both layouts and precisions."""
    h, p = torch.randn(rows, weight.shape[1]), torch.softmax(torch.randn(rows, weight.shape[0]), 1)
    h16, p16 = h.bfloat16(), p.bfloat16()
    return {
        "fp32 h Wᵀ": milliseconds(lambda: h @ weight.T, 3),
        "fp32 (W hᵀ)ᵀ": milliseconds(lambda: (weight @ h.T).T, 3),
        "fp32 p W": milliseconds(lambda: p @ weight, 3),
        "bf16 h Wᵀ": milliseconds(lambda: h16 @ weight16.T, 3),
        "bf16 p W": milliseconds(lambda: p16 @ weight16, 3),
    }


def streamed(weight: torch.Tensor, rows: int, repeats: int = 3, fused: bool = True) -> float:
    """ms of the streamed NLL and its gradient for ``rows`` random hidden states (bf16 W: the low-precision option).

    ``fused``: as the fitter runs it (the fused kernel where it applies); else the torch loop, chunk by chunk.
    """
    hidden, targets = torch.randn(rows, weight.shape[1]), torch.randint(0, weight.shape[0], (rows,))
    low_precision = weight.dtype == torch.bfloat16
    if not fused:
        return milliseconds(lambda: unembed._online_softmax(hidden, weight, None, None, low_precision), repeats)
    return milliseconds(lambda: _StreamedNLL.apply(hidden, weight, None, targets, None, low_precision), repeats)


def kernels(weight: torch.Tensor, rows: int = 10, chunk: int = 4096) -> dict[str, float]:
    """ms of the NLL's work (logits, online softmax, gradient) for ``rows`` rows, other ways than the streamed pass.

    * ``bmm blocks``: W in blocks of 16,384 rows viewed as [64, 256, d]; both products one batched
      GEMM per block, so the online softmax updates 16 times rather than 256;
    * ``2 threads x 1``: the streamed pass over each half of W in its own Python thread, torch on one
      thread each (no intra-op synchronisation per chunk), the halves merged;
    * ``MKL packed`` / ``oneDNN packed``: each ``chunk`` of W (and of Wᵀ) packed once into the
      library's own layout, as a compiler freezing the weight would; fp32 products only (oneDNN: the
      logits only); the packed copies cost twice W's memory;
    * ``fp16 h Wᵀ``: the logits product with this CPU's avx512_fp16;
    * the speed of a square fp32 GEMM, for scale.
    """
    from concurrent.futures import ThreadPoolExecutor

    vocab, width = weight.shape
    hidden = torch.randn(rows, width) / width**0.5

    def online(part: torch.Tensor, block: int, sub: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, z, s = torch.full((rows,), -torch.inf), torch.zeros(rows), torch.zeros(rows, width)
        for start in range(0, part.shape[0], block):
            w = part[start : start + block].view(-1, sub, width)
            logits = torch.bmm(hidden.expand(w.shape[0], rows, width), w.transpose(1, 2))
            m_new = torch.maximum(m, logits.amax((0, 2)))
            p = torch.exp(logits - m_new[None, :, None])
            z = z * torch.exp(m - m_new) + p.sum((0, 2))
            s = s * torch.exp(m - m_new)[:, None] + torch.bmm(p, w).sum(0)
            m = m_new
        return m, z, s

    pool = ThreadPoolExecutor(2)

    def halves() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            half = vocab // 2
            parts = [pool.submit(online, weight[i * half : (i + 1) * half], 1024, 256) for i in range(2)]
            (m1, z1, s1), (m2, z2, s2) = (part.result() for part in parts)
            m = torch.maximum(m1, m2)
            z = z1 * torch.exp(m1 - m) + z2 * torch.exp(m2 - m)
            (s1 * torch.exp(m1 - m)[:, None] + s2 * torch.exp(m2 - m)[:, None]) / z[:, None]
        finally:
            torch.set_num_threads(threads)

    # Each packed copy is as large as W: about 3 GiB in all here.
    pack, linear = torch.ops.mkl._mkl_reorder_linear_weight, torch.ops.mkl._mkl_linear
    plain = [weight[start : start + chunk].contiguous() for start in range(0, vocab, chunk)]
    plain_t = [w.T.contiguous() for w in plain]
    packed, packed_t = [pack(w, rows) for w in plain], [pack(w, rows) for w in plain_t]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in plain]
    fp16_w, fp16_h = weight.half(), hidden.half()

    def mkl() -> None:
        m, z, s = torch.full((rows,), -torch.inf), torch.zeros(rows), torch.zeros(rows, width)
        for w, w_t, pw, pw_t in zip(plain, plain_t, packed, packed_t, strict=True):
            logits = linear(hidden, pw, w, None, rows)
            m_new = torch.maximum(m, logits.amax(1))
            p = torch.exp(logits - m_new[:, None])
            z = z * torch.exp(m - m_new) + p.sum(1)
            s = s * torch.exp(m - m_new)[:, None] + linear(p, pw_t, w_t, None, rows)
            m = m_new

    def onednn_logits() -> None:
        for w in onednn:
            torch.ops.mkldnn._linear_pointwise(hidden, w, None, "none", [None], "")

    timings = {
        "the fitter's (fused kernel)": streamed(weight, rows),
        "torch loop": streamed(weight, rows, fused=False),
        "bmm blocks": milliseconds(lambda: online(weight, 16384, 256), 3),
        "2 threads x 1": milliseconds(halves, 3),
        "MKL packed": milliseconds(mkl, 3),
        "oneDNN packed, logits only": milliseconds(onednn_logits, 3),
        "fp16 h Wᵀ": milliseconds(lambda: fp16_h @ fp16_w.T, 3),
    }
    square = torch.randn(2048, 2048)
    timings["2048² fp32 GEMM (GFLOP/s, not ms)"] = 2 * 2048**3 / milliseconds(lambda: square @ square, 3) / 1e6
    return timings


def linear_layers(model, layer: int, rows: int = 10) -> dict[str, dict[str, float]]:
    """Per (out, in) shape of the linear layers in blocks ``layer``..: ms per layer, kernel and torch, each cycling
    through every layer of that shape (their weights, not one cached copy)."""
    from headsteer.fitting.linear_kernel import plain_linears

    shapes: dict[tuple[int, int], list[torch.nn.Linear]] = {}
    for linear in plain_linears(model.blocks[b] for b in range(layer, model.cfg.n_layers)):
        shapes.setdefault((linear.out_features, linear.in_features), []).append(linear)
    return {f"{o}x{i} ({len(layers)} layers)": linear_shape(layers, rows) for (o, i), layers in shapes.items()}


def linear_shape(layers: list[torch.nn.Linear], rows: int) -> dict[str, float]:
    """ms per layer of ``layers`` (one shape) on ``rows`` random rows, kernel and torch, against one read of W."""
    from headsteer.fitting.linear_kernel import skinny_linears

    x = torch.randn(rows, layers[0].in_features, requires_grad=True)
    g = torch.randn(rows, layers[0].out_features)

    def run(kernel: bool, backward: bool) -> None:
        with skinny_linears(layers if kernel else ()), torch.set_grad_enabled(backward):
            for linear in layers:
                y = linear(x)
                if backward:
                    torch.autograd.grad(y, x, g)

    timings = {
        f"{what} {how}": milliseconds(lambda k=kernel, b=backward: run(k, b), 3) / len(layers)
        for what, backward in (("forward", False), ("forward + input gradient", True))
        for how, kernel in (("fitter's", True), ("torch", False))
    }
    timings["one read of W"] = milliseconds(lambda: [m.weight.sum() for m in layers], 3) / len(layers)
    return timings


def matrix_share(fn: Callable[[], object]) -> tuple[float, float]:
    """(ms per call of ``fn``, ms of it in matrix products, the linear kernel's included), from torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 3000
    kinds = ("aten::mm", "aten::bmm", "aten::addmm", "_SkinnyLinear", "_SkinnyLinearBackward")  # the last: the kernel
    products = sum(e.self_cpu_time_total for e in events if e.key in kinds) / 3000
    return total, products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--rows", type=int, nargs="+", default=[10, 180], help="hidden-state rows for the products")
    parser.add_argument("--chunks", type=int, nargs="*", default=[], help="also time the streamed NLL at these chunks")
    parser.add_argument("--kernels", action="store_true", help="also time other stock kernels for the NLL")
    parser.add_argument("--linears", action="store_true", help="also time each linear shape, kernel and torch")
    parser.add_argument("--profile", action="store_true", help="also print torch's operator table")
    args = parser.parse_args()

    model = hs.load_model()
    for p in model.parameters():
        p.requires_grad_(False)  # as in a fit: gradients reach Δ only
    train = hs.split_task(hs.load_task("antonym"), n_train=10, seed=0)[0]
    tokens, targets = encode_targets(model.tokenizer, hs.get_template("qa"), train)
    prefix = build_prefix(model, tokens, 1)
    delta = torch.zeros(len(train), model.cfg.n_heads, model.cfg.d_head, requires_grad=True)
    layer = torch.full((len(train),), args.layer)
    weight = run_suffix(model, prefix).weight
    weight16 = weight.to(torch.bfloat16)
    first = targets.target_ids[:, :1]

    def step(low_precision: bool = False) -> None:
        scored = run_suffix(model, prefix, layer, delta)
        if low_precision:
            scored = FinalHidden(scored.hidden, weight16, scored.bias, scored.softcap, low_precision=True)
        scored.token_nll(first).mean().backward()

    fitter = PrefixCachedForward()  # its plan is made on the first call (a warm-up call of milliseconds)
    fitter16 = PrefixCachedForward(bf16_weights=True)
    as_the_model, wrapped = PrefixCachedForward(), PrefixCachedForward()
    with mock.patch.object(from_layer, "fused_blocks", lambda blocks: {}):  # its plan: no block run by hand
        as_the_model(model, layer, tokens, delta, 1)
        with mock.patch.object(from_layer, "bridge_slots", lambda blocks: ()):  # nor any component stepped around
            wrapped(model, layer, tokens, delta, 1)

    def fitter_step(forward: PrefixCachedForward = fitter) -> None:
        forward(model, layer, tokens, delta, 1).token_nll(first).mean().backward()

    def fitter_suffix(forward: PrefixCachedForward = fitter) -> None:
        forward(model, layer, tokens, delta, 1).hidden.sum().backward()

    def suffix_backward() -> None:
        run_suffix(model, prefix, layer, delta).hidden.sum().backward()

    @torch.no_grad()
    def suffix_forward() -> None:
        run_suffix(model, prefix, layer, delta)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Gemma 3 270M fp32, layer {args.layer}")
    print(f"step: fp32 unembedding {milliseconds(step):.1f}; bf16 unembedding {milliseconds(lambda: step(True)):.1f}")
    print(f"step as the fitter runs it, blocks {args.layer}.. only: {milliseconds(fitter_step):.1f}", end="")
    print(f" (with bf16 weights: {milliseconds(lambda: fitter_step(fitter16)):.1f})", end="")
    print(f"; each block as the model runs it: {milliseconds(lambda: fitter_step(as_the_model)):.1f}", end="")
    print(f"; and with every bridge component: {milliseconds(lambda: fitter_step(wrapped)):.1f}")
    print(f"suffix: forward {milliseconds(suffix_forward):.1f}; forward + backward {milliseconds(suffix_backward):.1f}")
    total, in_products = matrix_share(fitter_suffix)
    print(
        f"suffix as the fitter runs it, forward + backward: {total:.1f} (profiled); in products {in_products:.1f}; ",
        end="",
    )
    print(f"with bf16 weights {milliseconds(lambda: fitter_suffix(fitter16)):.1f}")
    threads = torch.get_num_threads()
    if threads > 1:  # the step's serial part: what does not speed up with threads (Python, small operations)
        many = milliseconds(lambda: fitter_step(fitter16))
        torch.set_num_threads(1)
        one = milliseconds(lambda: fitter_step(fitter16))
        torch.set_num_threads(threads)
        parallel = (one - many) * threads / (threads - 1)  # one = serial + parallel, many = serial + parallel/threads
        print(f"the fitter's step with bf16 weights on 1 thread {one:.1f}, on {threads} {many:.1f}: ", end="")
        serial = one - parallel  # at most: the kernels scale less than perfectly
        print(f"about {serial:.1f} serial (at most), {parallel:.1f} parallel")
    nll32, nll16 = streamed(weight, len(train), 5), streamed(weight16, len(train), 5)
    print(f"streamed NLL, {len(train)} rows, as the fitter runs it (fused kernel {kernel_status()}): ", end="")
    print(f"fp32 {nll32:.1f}; bf16 {nll16:.1f}")
    loop32, loop16 = streamed(weight, len(train), 5, fused=False), streamed(weight16, len(train), 5, fused=False)
    print(f"streamed NLL, {len(train)} rows, the torch loop: fp32 {loop32:.1f}; bf16 {loop16:.1f}")
    print(f"one read of W ({weight.numel() * 4 / 2**20:.0f} MiB fp32): {milliseconds(weight.sum):.1f}")
    for rows in args.rows:
        timings = products(weight, weight16, rows)
        print(f"{rows} rows: " + "; ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        fused = {
            f"{name} fitter's / torch loop": (streamed(w, rows), streamed(w, rows, fused=False))
            for name, w in (("fp32", weight), ("bf16", weight16))
        }
        print(f"{rows} rows, streamed NLL: " + "; ".join(f"{k} {a:.1f} / {b:.1f}" for k, (a, b) in fused.items()))
    for chunk in args.chunks:
        unembed.CHUNK = chunk  # read by the streamed NLL at each call
        timings = {rows: streamed(weight, rows, fused=False) for rows in args.rows}
        print(f"streamed NLL, chunk {chunk}: " + "; ".join(f"{rows} rows {ms:.1f}" for rows, ms in timings.items()))
    if args.kernels:
        print("the NLL for 10 rows, other kernels: " + "; ".join(f"{k} {v:.1f}" for k, v in kernels(weight).items()))
    if args.linears:
        for shape, timings in linear_layers(model, args.layer).items():
            print(f"linear {shape}, ms per layer: " + "; ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
