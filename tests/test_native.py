"""The C mask kernel's build: cached per source/compiler/flags/CPU, safe without a compiler; and
the retained host memory of CPU training jobs (train.malloc)."""
import os
import stat
import subprocess
import sys
import warnings

import pytest
import torch

from cast.optim import fused, native
from cast.sparsity import nm_mask


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty kernel cache and no loaded library; restored afterwards."""
    monkeypatch.setenv("CAST_CACHE_DIR", str(tmp_path / "cache"))
    native._library.cache_clear()
    yield tmp_path
    native._library.cache_clear()


def _counting_cc(tmp_path, real):
    """A compiler wrapper that logs each call, so a test can tell a build from a cache hit."""
    log = tmp_path / "cc.log"
    cc = tmp_path / "cc"
    cc.write_text(f'#!/bin/sh\necho x >> "{log}"\nexec "{real}" "$@"\n')
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    return cc, log


def test_built_once_then_loaded_from_the_cache(fresh, monkeypatch):
    real = native._compiler()
    if real is None:
        pytest.skip("no C compiler here")
    cc, log = _counting_cc(fresh, real[0])
    monkeypatch.setenv("CC", str(cc))
    assert native.available()
    built = sorted((fresh / "cache" / "native").glob("nm_mask-*.so"))
    calls = log.read_text().count("x")  # one per flag set tried until one built
    assert len(built) == 1 and calls >= 1
    assert not list((fresh / "cache" / "native").glob(".*tmp"))  # no temporary left behind
    native._library.cache_clear()  # a new process: loads, does not rebuild
    assert native.available() and log.read_text().count("x") == calls
    w = torch.randn(64, 256)
    new, flips = fused.refresh_mask(w, None, 2, 4)
    assert torch.equal(new, nm_mask(w, 2, 4)) and int(flips) == w.numel() // 2  # against no mask: the kept


def test_no_compiler_warns_once_and_the_refresh_still_works(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(fresh / "missing-cc"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not native.available() and not native.available()
        w = torch.randn(16, 64)
        out = fused.refresh_mask(w, None, 2, 4)
    assert [str(c.message) for c in caught if "C compiler" in str(c.message)] == [
        "no C compiler found ($CC, cc, gcc, clang): the N:M mask refresh uses torch.compile"]
    if fused.available():  # the compiled kernel, else (None) the caller's reference
        assert torch.equal(out[0], nm_mask(w, 2, 4))


def test_a_failing_compiler_is_reported_and_nothing_half_built_is_loaded(fresh, monkeypatch):
    bad = fresh / "badcc"
    bad.write_text("#!/bin/sh\necho 'cc: error: something' >&2\nexit 1\n")
    bad.chmod(bad.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(bad))
    with pytest.warns(UserWarning, match="could not build nm_mask.c"):
        assert not native.available()
    assert not list((fresh / "cache" / "native").iterdir())


def test_cc_may_carry_words(fresh, monkeypatch):
    real = native._compiler()
    if real is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("CC", f"env {real[0]}")  # a launcher word in front, as "ccache gcc"
    assert native._compiler() == ["env", real[0]]
    assert native.available()


def test_a_read_only_cache_builds_elsewhere(fresh):
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    ro = fresh / "cache" / "native"
    ro.mkdir(parents=True)
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert native.available()
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_fp32_cpu_tensors_go_to_the_c_kernel(fresh, monkeypatch):
    if not native.available():
        pytest.skip("no C compiler here")
    calls = []
    real = native.nm_mask_
    monkeypatch.setattr(native, "nm_mask_", lambda p, *a: calls.append(tuple(p.shape)) or real(p, *a))
    ws = [torch.randn(8, 16), torch.randn(16, 8, dtype=torch.float64), torch.randn(12, 4)]
    out = fused.refresh_masks(ws, [None] * 3, 2, 4)
    assert calls == [(8, 16), (12, 4)]
    assert all(o is None or torch.equal(o[0], nm_mask(w, 2, 4)) for o, w in zip(out, ws))


def test_switched_off_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("CAST_NATIVE", "0")
    assert not native.available()
    assert not native.supports(torch.randn(4, 8))


def test_only_contiguous_fp32_cpu_tensors(fresh):
    if not native.available():
        pytest.skip("no C compiler here")
    assert native.supports(torch.randn(4, 8))
    assert not native.supports(torch.randn(4, 8, dtype=torch.float64))
    assert not native.supports(torch.randn(8, 4).t())
    w = torch.randn(32, 64, dtype=torch.float64)  # the compiled kernel (or the reference) instead
    out = fused.refresh_mask(w, None, 2, 4)
    assert out is None or torch.equal(out[0], nm_mask(w, 2, 4))


def test_same_mask_whatever_the_thread_count(fresh):
    if not native.available():
        pytest.skip("no C compiler here")
    w = torch.randn(512, 1024)
    old = torch.get_num_threads()
    try:
        masks = []
        for t in (1, max(2, os.cpu_count() or 2)):
            torch.set_num_threads(t)
            masks.append(fused.refresh_mask(w, None, 2, 4)[0])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], nm_mask(w, 2, 4))


_FAULTS = """
import resource, sys, torch
from cast.train import retain_freed_host_memory
ok = retain_freed_host_memory() if sys.argv[1] == "retain" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(15):  # a 64 MB tensor made, touched and freed, as the logits every step
    torch.ones(16 * 1024 * 1024)
before = faults()
for _ in range(5):
    torch.ones(16 * 1024 * 1024)
print(ok, faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_retained_host_memory_reuses_freed_blocks_without_page_faults():
    """torch's 64-byte-aligned blocks are reused once glibc has coalesced the alignment slack
    (within the first ~8 same-size blocks); from then on, no page faults. glibc's default maps
    fresh pages every time (64 MB / 4 KiB = 16k faults per tensor)."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        ok, faults = out.stdout.split()
        return ok, int(faults)

    ok, faults = run("retain")
    if ok != "True":
        pytest.skip("not glibc")
    assert faults < 1000
    assert run("system")[1] > 5 * 10_000
