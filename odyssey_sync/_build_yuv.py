"""cffi API-mode builder for ``odyssey_sync._yuv`` (the native frame converter).

Used by setup.py through ``cffi_modules=["odyssey_sync/_build_yuv.py:ffibuilder"]``,
or directly (``python3 odyssey_sync/_build_yuv.py``) to compile in place.

API mode matters: out-of-line API-mode calls release the GIL around every C call,
so frame conversion runs in parallel with other Python threads.
"""

from __future__ import annotations

import os
import sys
import sysconfig

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join(os.path.dirname(_HERE), "csrc")

CDEF = """
int oys_cpu_level(void);
int oys_active_level(void);
int oys_set_level(int level);
int oys_convert(const uint8_t *y, ptrdiff_t y_stride,
                const uint8_t *u, const uint8_t *v, ptrdiff_t c_stride, int c_step,
                uint8_t *dst, ptrdiff_t dst_stride,
                int width, int height, int out_format, int matrix, int full_range);
size_t oys_resample_scratch(int src_w, int out_w);
int oys_resample(const uint8_t *y, ptrdiff_t y_stride,
                 const uint8_t *u, const uint8_t *v, ptrdiff_t c_stride, int c_step,
                 int src_w, int src_h,
                 uint8_t *dst, ptrdiff_t dst_stride, int out_w, int out_h,
                 int out_format, int matrix, int full_range,
                 const int32_t *lx_start, const uint16_t *lx_w, int lx_taps,
                 const int32_t *ly_start, const uint16_t *ly_w, int ly_taps,
                 const int32_t *cx_start, const uint16_t *cx_w, int cx_taps,
                 const int32_t *cy_start, const uint16_t *cy_w, int cy_taps,
                 uint16_t *scratch, size_t scratch_len);
int oys_gil_probe(volatile int32_t *flag, int64_t max_spins);
"""


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2"]
    # -O3 for the scalar tail; the SIMD tiers use intrinsics and target attributes,
    # so no -mavx2 here: the module must still load on CPUs without AVX2.
    return ["-O3", "-std=c99", "-fno-strict-aliasing"]


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "odyssey_sync._yuv",
    # The prototypes are the cdef itself: csrc/oys_yuv.c is one self-contained
    # file (no header to forget in a source distribution).
    "#include <stddef.h>\n#include <stdint.h>\n" + CDEF,
    sources=[os.path.relpath(os.path.join(_CSRC, "oys_yuv.c"))],
    extra_compile_args=_compile_args(),
    # Stable ABI: the module is named _yuv.abi3.so and loads on every CPython >= 3.10
    # (setup.py tags the wheel cp310-abi3). Free-threaded CPython has no stable ABI.
    py_limited_api=not sysconfig.get_config_var("Py_GIL_DISABLED"),
)

if __name__ == "__main__":
    # Build next to the sources so the repo tree imports it (pytest pythonpath=".").
    os.chdir(os.path.dirname(_HERE))
    ffibuilder.compile(tmpdir=".", verbose=True)
