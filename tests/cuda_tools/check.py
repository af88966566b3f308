"""Check the CUDA kernels of the cupy backend on a machine without a GPU.

Two checks, both on the real ``.cu`` sources of :mod:`fastconv.backends.cupy`:

1. :func:`nvrtc_check` compiles every source with NVRTC for compute_70, compute_80 and compute_90,
   instantiating every template through NVRTC name expressions (as ``cupy.RawModule`` does), and
   returns the PTX. NVRTC is loaded with ctypes from the ``nvidia-cuda-nvrtc-cu12`` wheel (or a CUDA
   toolkit); it needs no GPU and no driver.
2. :func:`cpu_kernels` compiles the same sources with a C++ compiler and ``cpu_compat.h`` (launch
   geometry of one block of one thread) into a shared library in a cache directory, and wraps each
   template instantiation for ctypes calls on NumPy buffers; :func:`cpu_backend` then runs the cupy
   backend's whole ops (GEMMs with NumPy, kernels from that library) on the CPU, so that tests can
   compare the kernels' index math and the ops' composition with a reference.

``python tests/cuda_tools/check.py`` runs both and prints a summary. Test machinery, not part of the package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fastconv.backends.cupy import kernels as _cu

ARCHS = ("compute_70", "compute_80", "compute_90")
# Real GPU code (SASS, through ptxas) for the same generations, as cupy.RawModule builds it when NVRTC
# knows the device's arch: catches what PTX generation alone does not (e.g. resource limits).
CUBIN_ARCHS = ("sm_70", "sm_80", "sm_90")
# cupy.RawModule adds this option to ours (cupy/cuda/compiler.py); the check compiles as RawModule does.
CUPY_ADDED_OPTIONS = ("--device-as-default-execution-space",)
NVRTC_ENV = "FASTCONV_NVRTC_LIBRARY"
CACHE_ENV = "FASTCONV_KERNEL_CACHE"
CPU_COMPAT = Path(__file__).resolve().parent / "cpu_compat.h"


class NVRTCNotFoundError(RuntimeError):
    """No loadable NVRTC library was found."""


class NVRTCCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message holds the compiler log."""


# ---------------------------------------------------------------------------------------------------
# NVRTC through ctypes
# ---------------------------------------------------------------------------------------------------


def _nvrtc_candidates() -> list[str]:
    """Paths or names to try for libnvrtc, most specific first."""
    found: list[str] = []
    if os.environ.get(NVRTC_ENV):
        found.append(os.environ[NVRTC_ENV])
    # The PyPI wheels: nvidia-cuda-nvrtc-cu12 -> nvidia/cuda_nvrtc/lib, cu13 -> nvidia/cu13/lib.
    try:
        import nvidia  # namespace package of the NVIDIA wheels

        for root in list(getattr(nvidia, "__path__", [])):
            for pattern in ("*/lib/libnvrtc.so*", "*/bin/nvrtc64_*.dll", "*/bin/*/nvrtc64_*.dll"):
                for path in sorted(glob.glob(os.path.join(root, pattern))):
                    if "builtins" not in os.path.basename(path) and ".alt." not in os.path.basename(path):
                        found.append(path)
    except ImportError:
        pass
    name = ctypes.util.find_library("nvrtc")
    if name:
        found.append(name)
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            found.extend(sorted(glob.glob(os.path.join(os.environ[env], "lib64", "libnvrtc.so*"))))
    found.extend(sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")))
    return [p for p in found if "builtins" not in os.path.basename(p)]


@lru_cache(maxsize=1)
def load_nvrtc() -> ctypes.CDLL:
    """Load libnvrtc (no GPU needed). Raises NVRTCNotFoundError saying how to install it."""
    errors = []
    for candidate in _nvrtc_candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as exc:
            errors.append(f"{candidate}: {exc}")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib._fastconv_path = candidate  # type: ignore[attr-defined]
        return lib
    tried = "; ".join(errors) if errors else "no candidate found"
    raise NVRTCNotFoundError(
        "NVRTC library not found (tried: " + tried + "). Install it with "
        "'pip install nvidia-cuda-nvrtc-cu12' (works without a GPU), or set "
        f"{NVRTC_ENV}=/path/to/libnvrtc.so"
    )


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the loaded NVRTC."""
    lib = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _nvrtc_ok(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _nvrtc_ok(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed: {lib.nvrtcGetErrorString(status).decode()} (status {status})")


def _cstrings(items: list[str]) -> ctypes.Array:
    arr = (ctypes.c_char_p * max(len(items), 1))()
    for i, s in enumerate(items):
        arr[i] = s.encode()
    return arr


@dataclass(frozen=True)
class CompileResult:
    """One NVRTC compilation: file, arch, PTX text (compute_XX) or CUBIN (sm_XX), lowered names, log.

    ``lowered`` maps each name expression to its mangled kernel name in the output.
    """

    file: str
    arch: str
    ptx: str
    lowered: dict[str, str]
    log: str
    cubin: bytes = b""


def nvrtc_compile(
    src: str,
    filename: str,
    arch: str,
    name_expressions: list[str],
    options: tuple[str, ...] = (*_cu.NVRTC_OPTIONS, *CUPY_ADDED_OPTIONS),
) -> CompileResult:
    """Compile ``src`` with NVRTC for ``arch``, instantiating ``name_expressions``.

    ``arch`` ``compute_XX`` gives PTX; ``sm_XX`` gives a CUBIN (PTX compiled on by ptxas).

    Raises NVRTCCompileError with the compiler log when NVRTC rejects the source.
    """
    lib = load_nvrtc()
    prog = ctypes.c_void_p()
    _nvrtc_ok(
        lib,
        lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), filename.encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        for expr in name_expressions:
            _nvrtc_ok(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        opts = [*options, f"--gpu-architecture={arch}"]
        status = lib.nvrtcCompileProgram(prog, len(opts), _cstrings(opts))
        size = ctypes.c_size_t()
        _nvrtc_ok(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        _nvrtc_ok(lib, lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace")
        if status != 0:
            raise NVRTCCompileError(
                f"NVRTC failed to compile {filename} for {arch} "
                f"({lib.nvrtcGetErrorString(status).decode()}):\n{log}"
            )
        lowered = {}
        for expr in name_expressions:
            name = ctypes.c_char_p()
            _nvrtc_ok(
                lib,
                lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)),
                f"nvrtcGetLoweredName({expr})",
            )
            lowered[expr] = name.value.decode()
        if arch.startswith("sm_"):
            _nvrtc_ok(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            _nvrtc_ok(lib, lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
            return CompileResult(filename, arch, "", lowered, log, cubin.raw)
        _nvrtc_ok(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        _nvrtc_ok(lib, lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return CompileResult(filename, arch, ptx.value.decode(), lowered, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def nvrtc_check(archs: tuple[str, ...] = ARCHS + CUBIN_ARCHS) -> list[CompileResult]:
    """Compile every kernel source, every instantiation, for every arch; raise on the first error."""
    return [
        nvrtc_compile(_cu.source(file), file, arch, _cu.name_expressions(file))
        for file in _cu.FILES
        for arch in archs
    ]


# ---------------------------------------------------------------------------------------------------
# The same sources on the CPU: g++ + cpu_compat.h, called through ctypes
# ---------------------------------------------------------------------------------------------------

CXX_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17", "-Wall", "-Wextra")
_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong}


def _export_name(kernel: str, dtype: str, index: str) -> str:
    return f"{kernel}__{dtype}__{index}"


def cpu_wrapper_source() -> str:
    """C++ translation unit: the .cu files plus one ``extern "C"`` wrapper per instantiation."""
    lines = [f'#include "{file}"' for file in _cu.FILES]
    for k in _cu.KERNELS.values():
        for dtype in _cu.ELEMENT_TYPES:
            for index in _cu.INDEX_TYPES:
                params = k.c_params(dtype, index)
                decl = ", ".join(f"{p} a{i}" for i, p in enumerate(params))
                call = ", ".join(f"a{i}" for i in range(len(params)))
                lines.append(
                    f'extern "C" void {_export_name(k.name, dtype, index)}({decl}) '
                    f"{{ {k.expression(dtype, index)}({call}); }}"
                )
    return "\n".join(lines) + "\n"


def _cache_dir() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    root = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), f"fastconv-kernels-{user}")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_cpu_library(cxx: str | None = None, cache_dir: Path | None = None) -> Path:
    """Compile the kernel sources for the CPU into a shared library (cached by content hash).

    Raises RuntimeError with the compiler output when the compiler is missing or fails.
    """
    cxx = cxx or os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise RuntimeError(f"C++ compiler {cxx!r} not found; install g++ or set CXX")
    wrapper = cpu_wrapper_source()
    digest = hashlib.sha256()
    for part in (cxx, " ".join(CXX_FLAGS), wrapper):
        digest.update(part.encode() + b"\0")
    for path in (CPU_COMPAT, *(_cu.SOURCE_DIR / name for name in (_cu.HEADER, *_cu.FILES))):
        digest.update(path.read_bytes() + b"\0")
    out_dir = cache_dir or _cache_dir()
    target = out_dir / f"fastconv_kernels_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        cpp = Path(tmp) / "fastconv_kernels_cpu.cpp"
        cpp.write_text(wrapper)
        tmp_out = Path(tmp) / target.name
        cmd = [
            cxx,
            *CXX_FLAGS,
            "-include",
            str(CPU_COMPAT),
            "-I",
            str(_cu.SOURCE_DIR),
            str(cpp),
            "-o",
            str(tmp_out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"CPU build of the CUDA kernels failed:\n$ {' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp_out, target)  # atomic: parallel test workers never see a half-written library
    return target


class CPUKernels:
    """The CUDA kernels compiled for the CPU, called like :func:`fastconv.backends.cupy.runtime.launch`.

    :meth:`launch` takes the same (kernel, dtype, Launch, arrays) as the GPU launcher, so the cupy
    backend's own launch arguments reach the kernels. ``index`` forces the int32 or int64
    instantiation (default: as the GPU backend picks it).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or build_cpu_library()
        self._lib = ctypes.CDLL(str(self.path))
        self._funcs: dict[tuple[str, str, str], ctypes._CFuncPtr] = {}
        self.index: str | None = None
        for k in _cu.KERNELS.values():
            for dtype in _cu.ELEMENT_TYPES:
                for index in _cu.INDEX_TYPES:
                    fn = getattr(self._lib, _export_name(k.name, dtype, index))
                    fn.restype = None
                    fn.argtypes = [
                        ctypes.c_void_p if p.endswith("*") else _CTYPES[p] for p in k.c_params(dtype, index)
                    ]
                    self._funcs[(k.name, dtype, index)] = fn

    def launch(
        self, kernel: str, dtype, launch: _cu.Launch, arrays: tuple[np.ndarray, ...], index=None
    ) -> None:
        """Run ``kernel`` over ``launch`` on NumPy buffers (one block of one thread: every element in order)."""
        dtype = np.dtype(dtype).name
        if dtype not in _cu.ELEMENT_TYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        for a in arrays:
            if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
                raise ValueError(f"{kernel}: arrays must be C-contiguous NumPy arrays")
        if launch.total == 0:
            return
        fn = self._funcs[(kernel, dtype, index or self.index or launch.index)]
        fn(*(a.ctypes.data for a in arrays), *launch.scalars)


class _NaNFilledNumPy:
    """NumPy, except that ``empty`` fills with NaN (-7 for integers): an unwritten element shows up."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        dtype = np.dtype(dtype)
        return np.full(shape, np.nan if dtype.kind == "f" else -7, dtype=dtype)


def _require_numpy(arr, arg: str, dtypes: tuple[str, ...] = tuple(_cu.ELEMENT_TYPES)):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{arg} must be a NumPy array on the CPU build, got {type(arr).__name__}")
    if arr.dtype.name not in dtypes:
        raise TypeError(f"{arg} must have dtype {' or '.join(dtypes)}, got {arr.dtype}")
    return np.ascontiguousarray(arr)


@contextmanager
def cpu_backend(kernels: CPUKernels | None = None, index: str | None = None):
    """Run the cupy backend's ops on the CPU: NumPy for CuPy, the g++ kernels for the CUDA ones.

    Inside the block ``fastconv.backends.cupy`` (its ops and pooling) takes and returns NumPy arrays;
    outputs of ``empty`` are NaN-filled. ``index`` forces one index instantiation. Not thread-safe:
    it swaps module attributes of ``fastconv.backends.cupy.runtime`` and restores them on exit.
    """
    from fastconv.backends.cupy import runtime as rt

    kernels = kernels or cpu_kernels()
    saved = (rt.cupy, rt.launch, rt.require)

    def launch(kernel, dtype, launch, arrays):
        kernels.launch(kernel, dtype, launch, arrays, index=index)

    rt.cupy, rt.launch, rt.require = _NaNFilledNumPy(), launch, _require_numpy
    try:
        import fastconv.backends.cupy as backend

        yield backend
    finally:
        rt.cupy, rt.launch, rt.require = saved


@lru_cache(maxsize=1)
def cpu_kernels() -> CPUKernels:
    """The CPU build of the kernels, built once per process (and cached on disk by content)."""
    return CPUKernels()


def main() -> int:
    """Run both checks and print a summary; exit status 1 on failure."""
    try:
        lib = load_nvrtc()
        major, minor = nvrtc_version()
        results = nvrtc_check()
    except (NVRTCNotFoundError, NVRTCCompileError) as exc:
        print(f"NVRTC check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"NVRTC {major}.{minor} ({lib._fastconv_path}):")
    for r in results:
        size = f"{len(r.ptx)} bytes of PTX" if r.ptx else f"{len(r.cubin)} bytes of CUBIN"
        print(f"  {r.file:12s} {r.arch:10s}: {len(r.lowered)} instantiations, {size}")
    path = build_cpu_library()
    print(f"CPU build: {path}")
    CPUKernels(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
