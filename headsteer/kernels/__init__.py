"""Hand-written CPU kernels, built on first use with the machine's C compiler and loaded through ctypes.

The kernels for the parts of a fit step that torch runs slowly on a few rows, all in one
shared library:

* ``nll.c``: the streamed NLL's pass over the unembedding (:mod:`headsteer.fitting.nll_kernel`);
* ``linear.c``: a linear layer's forward and input gradient for a few rows
  (:mod:`headsteer.fitting.linear_kernel`), for the blocks above Δ's layer;
* ``block.c``: the operations of those blocks' hand-written steps between their linear layers
  (RMSNorms, rotary, attention against the cache; :mod:`headsteer.fitting.block_ops`);
* ``block_step.c``: such a block's whole step, those stages in order, one call each way
  (:mod:`headsteer.fitting.native_step`), described by a :class:`BlockDescription`.

They build only on x86-64, need a C compiler with OpenMP (``$CC``, else ``cc``) and run only on
a CPU with AVX-512. Their threads are torch's own: the library is loaded after torch, so its
OpenMP calls bind to the ``libgomp`` torch already loaded (one thread pool, ``torch.set_num_threads``
sizes it; no second pool competing for the cores). The library is built once per source version
into ``<cache>/kernels/`` (written atomically, so concurrent first uses are safe).
``HEADSTEER_KERNELS=0`` turns them all off (the torch paths run).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch  # loaded first: the library's OpenMP binds to the libgomp torch loads

from headsteer.files import default_cache_dir, write_bytes_atomic

SWITCH_ENV = "HEADSTEER_KERNELS"  # "0": always the torch paths
SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("support.c", "nll.c", "linear.c", "block.c", "block_step.c")
)
HEADERS = (Path(__file__).with_name("tiles.h"),)
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp")  # the instruction sets are chosen per function in the source

_p, _int, _long, _float = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float


@dataclass(frozen=True)
class Kernels:
    """The loaded library; each function's arguments are in its C source."""

    handle: ctypes.CDLL
    nll_max_rows: int  # hidden rows per NLL call with an fp32 unembedding
    nll_max_rows_bf16: int  # and with a bf16 one
    linear_max_rows: int  # input rows per linear call with fp32 weights
    linear_max_rows_bf16: int  # and with bf16 ones

    @property
    def nll(self):  # (h, W, bias | None, rows, d_model, vocab, shares, m, z, s, bf16, split | None)
        return self.handle.headsteer_nll

    @property
    def linear(self):  # (x, W, bias | None, y, rows, in, out, shares, bf16, split | None)
        return self.handle.headsteer_linear

    @property
    def linear_input_grad(self):  # (g, W, dx, rows, out, in, shares, scratch, bf16)
        return self.handle.headsteer_linear_input_grad

    @property
    def rms_norm(self):  # (u, scale, eps, rows, dim, add | None, out, r, threads)
        return self.handle.headsteer_rms_norm

    @property
    def rms_norm_grad(self):  # (u, r, scale, g, rows, dim, add | None, out, threads)
        return self.handle.headsteer_rms_norm_grad

    @property
    def qk(self):  # (u, scale | None, eps, cos, sin, n, S, heads, d, out, r | None, threads)
        return self.handle.headsteer_qk

    @property
    def qk_grad(self):  # (g, u, r | None, scale | None, cos, sin, n, S, heads, d, out, threads)
        return self.handle.headsteer_qk_grad

    @property
    def attention(self):  # (q, keys, values, mask | None, scaling, delta | None, n, H, H_kv, S, T, d, p, z, threads)
        return self.handle.headsteer_attention

    @property
    def block_sizes(self):  # (block, n, S, T, threads, sizes: 2 longs <- the workspace's and the scratch's floats)
        return self.handle.headsteer_block_sizes

    @property
    def block_forward(self):
        """(block, x, delta | None, cos, sin, mask | None, keys, values, n, S, T0, y, ws, scratch, threads)"""
        return self.handle.headsteer_block_forward

    @property
    def block_backward(self):  # (block, grad_y, x, cos, sin, n, S, T0, ws, scratch, grad_x, grad_delta, threads)
        return self.handle.headsteer_block_backward

    @property
    def attention_grad(self):  # (grad_z, p, q, keys, values, scaling, n, H, H_kv, S, T, d, dq, dk, dv, threads)
        return self.handle.headsteer_attention_grad


class GroupDescription(ctypes.Structure):
    """``hs_group`` in block_step.c: linear layers reading one input, from one stacked weight or one weight each."""

    _fields_ = [
        ("weight", _p * 3),
        ("bias", _p * 3),
        ("rows", _long * 3),
        ("bf16", _int * 3),
        ("parts", _int),
        ("outputs", _int),
        ("out", _long * 3),
    ]


class BlockDescription(ctypes.Structure):
    """``hs_block`` in block_step.c: a decoder block's shapes, linear layers and norms."""

    _fields_ = [
        *((name, _int) for name in ("D", "H", "Hkv", "d", "F", "act")),
        ("scaling", _float),
        *((name, GroupDescription) for name in ("qkv", "o", "gate_up", "down")),
        ("scale", _p * 6),
        ("eps", _float * 6),
    ]


def pointer(tensor: torch.Tensor | None) -> int | None:
    """A tensor's address as a kernel takes it (None: a NULL pointer). The caller keeps the tensor alive."""
    return None if tensor is None else tensor.data_ptr()


def split_scratch(rows: int, width: int) -> torch.Tensor:
    """Scratch for ``rows`` fp32 rows of ``width`` as the kernels split them to multiply bf16 weights (``split``
    in nll.c and linear.c: their columns in groups of 32, the last one padded)."""
    return torch.empty(rows, -(-width // 32) * 32)


def compile_sources(compiler: str, sources: tuple[Path, ...], target: Path) -> str | None:
    """Build ``sources`` (this package's, or a changed copy: ``benchmarks/kernel_ab.py``) into ``target``;
    the compiler's last words where it fails."""
    command = [compiler, *FLAGS, *map(str, sources), "-o", str(target), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    return done.stderr.strip()[-300:] or f"exit status {done.returncode}"


def load(path: Path) -> ctypes.CDLL:
    """A built library, its functions' argument types declared (see each function in its C source)."""
    handle = ctypes.CDLL(str(path))
    for name in ("headsteer_supported", "headsteer_nll_max_rows", "headsteer_linear_max_rows"):
        getattr(handle, name).restype = _int
    handle.headsteer_nll_max_rows.argtypes = handle.headsteer_linear_max_rows.argtypes = [_int]
    handle.headsteer_nll.argtypes = [_p, _p, _p, _int, _int, _long, _int, _p, _p, _p, _int, _p]
    handle.headsteer_linear.argtypes = [_p, _p, _p, _p, _int, _int, _long, _int, _int, _p]
    handle.headsteer_linear_input_grad.argtypes = [_p, _p, _p, _int, _long, _int, _int, _p, _int]
    handle.headsteer_rms_norm.argtypes = [_p, _p, _float, _long, _int, _p, _p, _p, _int]
    handle.headsteer_rms_norm_grad.argtypes = [_p, _p, _p, _p, _long, _int, _p, _p, _int]
    handle.headsteer_qk.argtypes = [_p, _p, _float, _p, _p, _long, _int, _int, _int, _p, _p, _int]
    handle.headsteer_qk_grad.argtypes = [_p, _p, _p, _p, _p, _p, _long, _int, _int, _int, _p, _int]
    handle.headsteer_attention.argtypes = [*(_p,) * 4, _float, _p, _long, *(_int,) * 5, _p, _p, _int]
    handle.headsteer_attention_grad.argtypes = [*(_p,) * 5, _float, _long, *(_int,) * 5, *(_p,) * 3, _int]
    block = ctypes.POINTER(BlockDescription)
    handle.headsteer_block_sizes.argtypes = [block, _long, _int, _int, _int, ctypes.POINTER(_long)]
    handle.headsteer_block_forward.argtypes = [block, *(_p,) * 7, _long, _int, _int, *(_p,) * 3, _int]
    handle.headsteer_block_backward.argtypes = [block, *(_p,) * 4, _long, _int, _int, *(_p,) * 4, _int]
    return handle


@functools.cache
def library() -> Kernels | str:
    """The compiled kernels, or why there are none (built into the cache on first use)."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return f"off (${SWITCH_ENV}=0)"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"off ({platform.machine()}: the kernels are for x86-64 CPUs with AVX-512)"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return "off (no C compiler: set $CC or install gcc)"
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"headsteer-{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory() as build:
            built = Path(build) / target.name
            failed = compile_sources(compiler, SOURCES, built)
            if failed:
                return f"off ({compiler} failed: {failed})"
            write_bytes_atomic(target, built.read_bytes())
    handle = load(target)
    if not handle.headsteer_supported():
        return "off (this CPU has no AVX-512)"
    nll_rows = handle.headsteer_nll_max_rows(0), handle.headsteer_nll_max_rows(1)
    return Kernels(handle, *nll_rows, handle.headsteer_linear_max_rows(0), handle.headsteer_linear_max_rows(1))


def status() -> str:
    """'on', or 'off (why)'."""
    loaded = library()
    return loaded if isinstance(loaded, str) else "on"
