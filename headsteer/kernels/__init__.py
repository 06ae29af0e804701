"""Hand-written CPU kernels, built on first use with the machine's C compiler and loaded through ctypes.

``nll.c``: the streamed NLL's pass over the unembedding (:mod:`headsteer.fitting.nll_kernel`
says what it computes and when it runs). It builds only on x86-64, needs a C compiler
(``$CC``, else ``cc``) and runs only on a CPU with AVX-512; each shared library is built
once per source version into ``<cache>/kernels/`` (written atomically, so concurrent
first uses are safe). ``HEADSTEER_NLL_KERNEL=0`` turns the kernel off.
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

from headsteer.files import default_cache_dir, write_bytes_atomic

SWITCH_ENV = "HEADSTEER_NLL_KERNEL"  # "0": always the torch loop
SOURCE = Path(__file__).with_name("nll.c")
FLAGS = ("-O3", "-shared", "-fPIC")  # the instruction sets are chosen per function in the source

_ptr = ctypes.c_void_p


@dataclass(frozen=True)
class NLLLibrary:
    """The loaded kernel: ``f32`` and ``bf16`` (W's dtype) take (h, W, bias or None, rows, d_model, v0, v1, m, z, s)."""

    handle: ctypes.CDLL
    max_rows: int  # hidden rows per call
    block: int  # vocabulary rows the kernel takes at a time

    @property
    def f32(self):
        return self.handle.headsteer_nll_f32

    @property
    def bf16(self):
        return self.handle.headsteer_nll_bf16


@functools.cache
def nll_library() -> NLLLibrary | str:
    """The compiled NLL kernel, or why there is none (built into the cache on first use)."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return f"off (${SWITCH_ENV}=0)"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"off ({platform.machine()}: the kernel is for x86-64 CPUs with AVX-512)"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return "off (no C compiler: set $CC or install gcc)"
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"nll-{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory() as build:
            built = Path(build) / target.name
            done = subprocess.run(
                [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                return f"off ({compiler} failed: {done.stderr.strip()[-300:]})"
            write_bytes_atomic(target, built.read_bytes())
    handle = ctypes.CDLL(str(target))
    for name in ("headsteer_nll_supported", "headsteer_nll_max_rows", "headsteer_nll_block"):
        getattr(handle, name).restype = ctypes.c_int
    for name in ("headsteer_nll_f32", "headsteer_nll_bf16"):
        getattr(handle, name).argtypes = [_ptr, _ptr, _ptr, ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        getattr(handle, name).argtypes += [_ptr, _ptr, _ptr]
    if not handle.headsteer_nll_supported():
        return "off (this CPU has no AVX-512)"
    return NLLLibrary(handle, handle.headsteer_nll_max_rows(), handle.headsteer_nll_block())


def nll_status() -> str:
    """'on', or 'off (why)'."""
    library = nll_library()
    return library if isinstance(library, str) else "on"
