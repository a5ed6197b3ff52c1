"""The N:M mask refresh on CPU as a small C kernel (nm_mask.c), for AdamS(impl="compiled").

Inductor compiles the refresh's stride-M loads into a scalar loop (~25 ms for 21M weights on
2 cores, more than an AdamS step); the C loop, which GCC/Clang vectorise across the groups, takes
~7 ms (benchmarks/bench_adams.py). The kernel is built on first use with the C compiler that
torch.compile needs anyway (`$CC`, else cc/gcc/clang), with -O3 -march=native and OpenMP where
the compiler takes them, into a cache keyed by the source, the compiler, the flags and this
CPU's features (a shared home on a cluster with mixed nodes gets one build per CPU kind):
`$CAST_CACHE_DIR`, else `$XDG_CACHE_HOME/cast`, else ~/.cache/cast. Concurrent builds write to
temporary names and rename, so parallel jobs never load a half-written library.

Where no compiler works, or CAST_NATIVE=0, `available()` is False (warned once) and the caller
uses the torch.compile kernel (cast.optim.fused). Only contiguous fp32 CPU tensors come here.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from ..sparsity import nm_groups

SOURCE = Path(__file__).with_name("nm_mask.c")
# tried in order: the first that builds is used
FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3", "-march=native"], ["-O3"])


def cache_dir() -> Path:
    root = os.environ.get("CAST_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cast"
    return Path(root) / "native"


def _compiler() -> list[str] | None:
    """The compiler command: $CC (which may carry words, e.g. "ccache gcc"), else cc/gcc/clang."""
    cc = shlex.split(os.environ.get("CC", ""))
    if cc:
        return cc if shutil.which(cc[0]) else None
    return next(([p] for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu_features() -> str:
    """The flags line of /proc/cpuinfo (Linux), else the processor name: part of the cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(cc: list[str], flags: list[str], out: Path) -> bool:
    """Compile into a unique temporary name next to `out`, then rename: atomic, also for jobs on
    several hosts sharing one cache."""
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    try:
        r = subprocess.run([*cc, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            return False
        os.replace(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def _writable_cache() -> Path:
    """cache_dir(), or a private temporary folder (once per process) if it cannot be written."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK | os.X_OK):
            return d
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="cast-native-"))


@functools.cache
def _library():
    """The loaded kernel library, or None (with one warning) if it cannot be built."""
    if os.environ.get("CAST_NATIVE", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn("no C compiler found ($CC, cc, gcc, clang): the N:M mask refresh uses torch.compile", stacklevel=3)
        return None
    src, folder = SOURCE.read_bytes(), None
    where = [_cpu_features().encode(), platform.machine().encode()]
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([src, " ".join(cc).encode(), " ".join(flags).encode(), *where])).hexdigest()[:16]
        path = cache_dir() / f"nm_mask-{key}.so"
        if not path.exists():  # (a read-only cache may still hold a build from elsewhere)
            folder = folder or _writable_cache()
            path = folder / path.name
        if path.exists() or _build(cc, flags, path):
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                continue
            fn = lib.nm_mask_f32
            fn.restype = ctypes.c_int64
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_int]
            return fn
    warnings.warn(f"could not build {SOURCE.name} with {' '.join(cc)}: the N:M mask refresh uses torch.compile",
                  stacklevel=3)
    return None


def available() -> bool:
    return _library() is not None


def supports(p: torch.Tensor) -> bool:
    return p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() and available()


def nm_mask_(p: torch.Tensor, old: torch.Tensor, out: torch.Tensor, n: int, m: int, input_dim: int) -> int:
    """Eq. 6 into `out` (bool, p's shape, contiguous) for a 2-D fp32 CPU tensor p; returns the
    number of entries where `out` differs from `old` (bool, contiguous). Caller checks supports(p)."""
    a, b = nm_groups(p.shape, m, input_dim)
    return _library()(p.data_ptr(), old.data_ptr(), out.data_ptr(), a, m, b, n, torch.get_num_threads())
