"""Every CUDA kernel source compiles with NVRTC for compute_70/80/90, every template instantiated.

Needs no GPU: NVRTC is loaded from the ``nvidia-cuda-nvrtc-cu12`` wheel (the ``test`` extra). Where
that library is missing the tests fail in CI (``CI`` set) and skip elsewhere. PTX for compute_70/80/90
always; GPU code (CUBIN through ptxas) for sm_70/80/90 in the ``slow`` tests.
"""

from __future__ import annotations

import os
import re

import pytest
from cuda_tools import check as _cuda_check

from fastconv.backends.cupy import kernels as cuda


@pytest.fixture(scope="module")
def nvrtc():
    try:
        return _cuda_check.load_nvrtc()
    except _cuda_check.NVRTCNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must compile the CUDA kernels: {exc}")
        pytest.skip(str(exc))


@pytest.mark.parametrize("arch", _cuda_check.ARCHS)
@pytest.mark.parametrize("file", cuda.FILES)
def test_kernel_source_compiles_with_nvrtc_for_every_instantiation(nvrtc, file, arch):
    result = _cuda_check.nvrtc_compile(cuda.source(file), file, arch, cuda.name_expressions(file))
    assert f".target sm_{arch.split('_')[1]}" in result.ptx
    entries = set(re.findall(r"\.entry\s+(\w+)\(", result.ptx))
    for expr, lowered in result.lowered.items():
        assert lowered in entries, f"{expr} was not instantiated in the PTX of {file} for {arch}"
    assert len(entries) == len(cuda.name_expressions(file))
    # NVRTC 12.9 warns that compute_70 is deprecated; any other warning points at the source.
    warnings = [w for w in result.log.splitlines() if "warning" in w and "deprecated" not in w]
    assert not warnings, result.log


@pytest.mark.slow  # ptxas: about 2 s per file and arch
@pytest.mark.parametrize("arch", _cuda_check.CUBIN_ARCHS)
@pytest.mark.parametrize("file", cuda.FILES)
def test_kernel_source_compiles_to_gpu_code_for_every_instantiation(nvrtc, file, arch):
    result = _cuda_check.nvrtc_compile(cuda.source(file), file, arch, cuda.name_expressions(file))
    assert result.cubin[:4] == b"\x7fELF"
    for expr, lowered in result.lowered.items():
        assert lowered.encode() in result.cubin, f"{expr} is missing from the {arch} code of {file}"


def test_nvrtc_check_rejects_a_type_error(nvrtc):
    broken = cuda.source("im2col.cu").replace("T sum = T(0);", "T sum = no_such_variable;")
    assert broken != cuda.source("im2col.cu")
    with pytest.raises(_cuda_check.NVRTCCompileError, match="no_such_variable"):
        _cuda_check.nvrtc_compile(broken, "im2col.cu", "compute_80", cuda.name_expressions("im2col.cu"))


def test_nvrtc_check_rejects_a_kernel_whose_instantiation_does_not_exist(nvrtc):
    with pytest.raises((_cuda_check.NVRTCCompileError, RuntimeError)):
        _cuda_check.nvrtc_compile(
            cuda.source("pool.cu"), "pool.cu", "compute_80", ["fc_maxpool_fwd<int, int, int>"]
        )


def test_nvrtc_version_is_cuda_12_or_later(nvrtc):
    major, _ = _cuda_check.nvrtc_version()
    assert major >= 12


def test_every_kernel_is_declared_in_the_kernel_table():
    declared = set()
    for file in cuda.FILES:
        declared |= {(m, file) for m in re.findall(r"__global__\s+void\s+(\w+)\s*\(", cuda.source(file))}
    assert declared == {(k.name, k.file) for k in cuda.KERNELS.values()}


def _declared_params(file: str) -> dict[str, tuple[str, ...]]:
    """Each kernel's parameter types as written in the .cu file, names and __restrict__ dropped."""
    out = {}
    text = (cuda.SOURCE_DIR / file).read_text()
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", text):
        types = []
        for p in params.split(","):
            p = re.sub(r"\s+", " ", p.replace("__restrict__", "")).strip()
            types.append(re.sub(r"\s*\w+$", "", p).replace(" *", "*"))
        out[name] = tuple(types)
    return out


def test_kernel_table_parameter_types_match_the_cuda_signatures():
    # the launcher converts each scalar to the table's type (int, or the index type I): a table that
    # said "int" where the kernel takes I would pass 4 bytes for 8 on the GPU (C++ would convert it
    # silently in the CPU build)
    for file in cuda.FILES:
        for name, params in _declared_params(file).items():
            assert cuda.KERNELS[name].params == params, name


def test_every_kernel_carries_an_index_math_comment():
    for file in cuda.FILES:
        lines = (cuda.SOURCE_DIR / file).read_text().splitlines()
        for n, line in enumerate(lines):
            if line.startswith("template") and "__global__" in lines[n + 1]:
                assert lines[n - 1].startswith("//"), f"{file}:{n + 2}: kernel without an index-math comment"


def test_sources_are_self_contained_with_the_header_inlined():
    for file in cuda.FILES:
        text = cuda.source(file)
        assert "#include" not in text
        assert "FC_FOR" in text


def test_index_type_switches_to_64_bit_at_two_to_the_31():
    assert cuda.index_type(2**31 - 1, 5) == "int32"
    assert cuda.index_type(5, 2**31) == "int64"
    # a col of 2**31 elements or more needs the 64-bit instantiation, even when x is small
    big = cuda.im2col_args((2**10, 32, 64, 64), 8, 8, (1, 1), (0, 0, 0, 0), (1, 1), k_major=True)
    assert big.total >= 2**31 and big.index == "int64"
    small = cuda.im2col_args((64, 32, 13, 13), 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), k_major=True)
    assert small.index == "int32"
    nhwc = cuda.im2col_nhwc_args((2**10, 64, 64, 32), 8, 8, (1, 1), (0, 0, 0, 0), (1, 1), 4)
    assert nhwc.total >= 2**31 and nhwc.index == "int64"
    # a depthwise dW whose x is over 2**31 elements indexes x with 64 bits although partial is small
    first, _ = cuda.dw_bwd_filter_args(
        (2, 2**30 // 8, 64, 64), 2**30 // 8, 3, 3, (1, 1), (1,) * 4, (1, 1), "NCHW"
    )
    assert first.index == "int64"
    pool = cuda.avgpool_fwd_args((1, 46342, 46342, 1), 2, 2, (2, 2), (0,) * 4, (23171, 23171), True, "NHWC")
    assert pool.index == "int64"
