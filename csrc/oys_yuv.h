/*
 * odyssey_sync native frame path: planar YUV 4:2:0 -> packed RGB.
 *
 * Arithmetic reproduces libswscale's unscaled x86 yuv2rgb path bit for bit
 * (16-bit fixed point, coefficients in 3.13, luma and chroma pre-shifted by 3,
 * multiply-high, each term truncated, sum saturated to 0..255), so the output
 * equals av.VideoFrame.to_ndarray(format="rgb24") for even-height yuv420p.
 *
 * No function here allocates, keeps state between calls or touches Python.
 */
#ifndef OYS_YUV_H
#define OYS_YUV_H

#include <stddef.h>
#include <stdint.h>

/* Output layouts. */
#define OYS_RGB24 0
#define OYS_BGR24 1
#define OYS_RGBA 2

/* Colour matrices (only the two swscale's unscaled path distinguishes for us). */
#define OYS_BT601 0
#define OYS_BT709 1

/* Implementation tiers. */
#define OYS_LEVEL_SCALAR 0
#define OYS_LEVEL_SSE2 1
#define OYS_LEVEL_AVX2 2
#define OYS_LEVEL_AVX512 3 /* AVX-512BW + VBMI */

/* Error codes (0 = success). */
#define OYS_OK 0
#define OYS_EINVAL (-1)

/* Best tier this CPU supports. */
int oys_cpu_level(void);
/* Tier in use; starts at oys_cpu_level(). */
int oys_active_level(void);
/* Select a tier (clamped to what the CPU supports); returns the tier now in use. */
int oys_set_level(int level);

/*
 * Convert one 4:2:0 frame.
 *   y, y_stride          luma plane, bytes per row (>= width)
 *   u, v, c_stride       chroma planes; for NV12 pass the interleaved UV plane as u and
 *                        v = u + 1; c_step is 1 for I420 and 2 for NV12
 *   dst, dst_stride      packed output, bytes per row (>= width * 3 or * 4)
 *   width, height        >= 2 each, odd values allowed (chroma of the last odd
 *                        row/column is the ceil-sized chroma plane's last sample)
 *   out_format           OYS_RGB24 / OYS_BGR24 / OYS_RGBA (alpha 255)
 *   matrix, full_range   OYS_BT601 / OYS_BT709; 0 = limited (MPEG), 1 = full (JPEG)
 * Returns OYS_OK or OYS_EINVAL. Thread-safe; intended to be called without the GIL.
 */
int oys_convert(const uint8_t *y, ptrdiff_t y_stride,
                const uint8_t *u, const uint8_t *v, ptrdiff_t c_stride, int c_step,
                uint8_t *dst, ptrdiff_t dst_stride,
                int width, int height, int out_format, int matrix, int full_range);

/*
 * Test hook proving the GIL is released around calls: spins until *flag becomes
 * non-zero (set by another Python thread, which needs the GIL to do so) or until
 * max_spins iterations pass. Returns 1 if the flag was seen, 0 on give-up.
 */
int oys_gil_probe(volatile int32_t *flag, int64_t max_spins);

#endif
