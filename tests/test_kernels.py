"""Building and loading the hand-written kernels: once into the cache, on torch's own threads, or off with a reason."""

import json
import subprocess
import sys

import pytest

from headsteer import files, kernels

needs_kernels = pytest.mark.skipif(kernels.status() != "on", reason=f"kernels {kernels.status()}")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A cache of its own and no loaded library, so that the test sees the build (or its refusal) happen."""
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    kernels.library.cache_clear()
    yield tmp_path
    kernels.library.cache_clear()


def test_switching_the_kernels_off(fresh_build, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH_ENV, "0")
    assert kernels.status() == f"off (${kernels.SWITCH_ENV}=0)"
    assert not list(fresh_build.rglob("*.so")), "nothing is built when switched off"


def test_a_compiler_that_fails_leaves_them_off_and_says_why(fresh_build, monkeypatch):
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("CC", "false")
    assert kernels.status().startswith("off (false failed")
    assert not list(fresh_build.rglob("*.so")), "nothing half-built is left in the cache"


def test_another_cpu_does_not_build(fresh_build, monkeypatch):
    monkeypatch.setattr(kernels.platform, "machine", lambda: "arm64")
    assert kernels.status() == "off (arm64: the kernels are for x86-64 CPUs with AVX-512)"


@needs_kernels
def test_the_library_is_built_once_into_the_cache(fresh_build):
    assert kernels.status() == "on"
    (built,) = (fresh_build / "kernels").glob("headsteer-*.so")
    stamp = built.stat().st_mtime_ns
    kernels.library.cache_clear()
    assert kernels.status() == "on"
    assert built.stat().st_mtime_ns == stamp


@needs_kernels
def test_the_kernels_run_on_torchs_own_openmp_threads():
    """One libgomp in the process, torch's: no second thread pool competing with torch's for the cores."""
    script = (
        "from headsteer import kernels; assert kernels.status() == 'on'; "
        "import json; print(json.dumps(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l})))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert len(loaded) == 1, loaded
    assert "torch" in loaded[0], loaded
