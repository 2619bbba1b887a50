/*
 * odyssey_sync native frame path: YUV 4:2:0 (I420 / NV12) -> RGB24 / BGR24 / RGBA.
 *
 * Why this arithmetic: the SDK promises the same colours as PyAV's
 * to_ndarray(format="rgb24"), which for yuv420p runs libswscale's unscaled x86
 * converter. That converter works in 16-bit fixed point: luma and chroma are
 * shifted left by 3, offsets removed, each term multiplied-high (>> 16) by a
 * coefficient in 3.13 format, terms added, result saturated to 0..255. Doing the
 * same here gives bit-identical output, and it is also the cheapest arithmetic
 * for SIMD (one pmulhw per term, no rounding constants, no 32-bit lanes).
 *
 * Tiers, picked at run time: AVX-512 BW+VBMI (64 px per iteration, two rows per
 * chroma row), AVX2 (32 px, two rows per chroma row), SSE2 (16 px; the x86-64
 * baseline), portable C (everything else, and row tails). All give identical bytes.
 *
 * No function here allocates, keeps per-call state or touches Python. The file is
 * self-contained (one translation unit, no header) so any source distribution of
 * the package carries everything the build needs; the Python side declares the
 * exported functions to cffi in odyssey_sync/_build_yuv.py.
 */
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
 * Convert and resample one 4:2:0 frame in one pass: the planes are read once and
 * only the out_w x out_h output is written. The filter is separable and given as
 * tables (built by odyssey_sync/_resize.py): for each axis -- luma x, luma y,
 * chroma x, chroma y -- output i reads source samples start[i] .. start[i]+taps-1
 * (plane coordinates, nondecreasing, inside the plane) with unsigned Q16 weights
 * w[i * taps + t] summing to at most 65536. Y, U and V are resampled (16-bit,
 * 8 fractional bits) and each output pixel converted with rounding (BT.601 /
 * BT.709, limited / full range); no full-size RGB is ever formed.
 *   y .. c_step          as oys_convert; src_w, src_h the luma size (>= 2)
 *   dst, dst_stride      packed output rows, out_w x out_h (>= 1 each)
 *   scratch              >= oys_resample_scratch(src_w, out_w) uint16 elements,
 *                        owned by this call (not shared between threads)
 * Returns OYS_OK or OYS_EINVAL (a table outside its plane, scratch too small, ...).
 * Thread-safe; intended to be called without the GIL.
 */
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

/*
 * Test hook proving the GIL is released around calls: spins until *flag becomes
 * non-zero (set by another Python thread, which needs the GIL to do so) or until
 * max_spins iterations pass. Returns 1 if the flag was seen, 0 on give-up.
 */
int oys_gil_probe(volatile int32_t *flag, int64_t max_spins);

#include <string.h>

/* OYS_NO_SIMD builds the portable code only (what non-x86 / MSVC builds get). */
#if !defined(OYS_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define OYS_X86 1
#include <immintrin.h>
#else
#define OYS_X86 0
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

typedef struct {
    int16_t yc;   /* luma gain, 3.13 */
    int16_t yoff; /* luma offset in the <<3 domain (128 for limited range) */
    int16_t vr, ub, ug, vg; /* chroma gains, 3.13 (ug, vg negative) */
} oys_coeffs;

#define OYS_BAND 16 /* output rows per band: the transposes are 16 x 16 */

typedef struct {
    const int32_t *start;
    const uint16_t *w;
    int taps, n;
} oys_axis;

/* Sample (row r, column x) of a plane is p[r * stride + x * step]. For the V
 * samples of NV12, p = uv + 1 and odd = 1: SIMD loads start one byte earlier. */
typedef struct {
    const uint8_t *p;
    ptrdiff_t stride;
    int step, odd;
} oys_plane;

/* The taps of one output row grouped into runs of equal non-zero weight (an area
 * filter has at most three: two partial edges and the interior). A run's samples
 * are summed as integers and multiplied once: contribution (sum * w) >> 8, Q8.
 * Runs are capped at 256 taps so the sum fits 16 bits. Both tiers use these runs,
 * so they give identical bytes. */
#define OYS_MAX_RUNS 64
typedef struct {
    int t0, len;
    uint16_t w;
} oys_run;

static int build_runs(const uint16_t *w, int taps, oys_run *runs)
{
    int n = 0;
    for (int t = 0; t < taps; t++) {
        if (!w[t]) continue;
        if (n && runs[n - 1].w == w[t] && runs[n - 1].t0 + runs[n - 1].len == t &&
            runs[n - 1].len < 256) {
            runs[n - 1].len++;
            continue;
        }
        if (n == OYS_MAX_RUNS) return -1;
        runs[n].t0 = t;
        runs[n].len = 1;
        runs[n].w = w[t];
        n++;
    }
    return n;
}

/* libswscale's ff_yuv2rgb_coeffs rows, 16.16: crv, cbu, cgu, cgv. */
static const int32_t k_matrix[2][4] = {
    {104597, 132201, 25675, 53279},  /* ITU-R BT.601 (also 470BG, SMPTE170M, unspecified) */
    {117489, 138438, 13975, 34925},  /* ITU-R BT.709 */
};

static int16_t round_to_int16(int64_t f)
{
    int64_t r = (f + (1 << 15)) >> 16;
    if (r < -0x7FFF) r = -0x7FFF;
    if (r > 0x7FFF) r = 0x7FFF;
    return (int16_t)r;
}

/* Mirrors sws_setColorspaceDetails with default brightness/contrast/saturation. */
static void make_coeffs(int matrix, int full_range, oys_coeffs *c)
{
    const int32_t *m = k_matrix[matrix == OYS_BT709 ? 1 : 0];
    int64_t crv = m[0], cbu = m[1], cgu = -(int64_t)m[2], cgv = -(int64_t)m[3];
    int64_t cy = 1 << 16, oy = 0;
    if (!full_range) {
        cy = (cy * 255) / 219;
        oy = (int64_t)16 << 16;
    } else {
        /* C division truncates toward zero, as in libswscale. */
        crv = (crv * 224) / 255;
        cbu = (cbu * 224) / 255;
        cgu = (cgu * 224) / 255;
        cgv = (cgv * 224) / 255;
    }
    c->yc = round_to_int16(cy * (1 << 13));
    c->yoff = round_to_int16(oy * (1 << 3));
    c->vr = round_to_int16(crv * (1 << 13));
    c->ub = round_to_int16(cbu * (1 << 13));
    c->ug = round_to_int16(cgu * (1 << 13));
    c->vg = round_to_int16(cgv * (1 << 13));
}

static inline int mulhi(int a, int b) { return (a * b) >> 16; } /* pmulhw: floor */

static inline uint8_t clamp_u8(int x) { return (uint8_t)(x < 0 ? 0 : (x > 255 ? 255 : x)); }

/* Scalar pixels [x0, width) of one output row. The layout is a compile-time
 * constant in each instantiation so the inner loop has no per-pixel branches. */
static inline void put_px(uint8_t *restrict p, int yy, int rc, int gc, int bc, const int bpp,
                          const int ri)
{
    p[ri] = clamp_u8(yy + rc);
    p[1] = clamp_u8(yy + gc);
    p[2 - ri] = clamp_u8(yy + bc);
    if (bpp == 4) p[3] = 255;
}

static inline void row_scalar_fmt(const uint8_t *restrict yrow, const uint8_t *restrict u,
                                  const uint8_t *restrict v, int c_step, uint8_t *restrict d,
                                  int x0, int width, const oys_coeffs *c, const int bpp,
                                  const int ri)
{
    const int yc = c->yc, yoff = c->yoff, vr = c->vr, ug = c->ug, vg = c->vg, ub = c->ub;
    int x = x0;
    /* x0 is even (a SIMD block boundary or 0): chroma terms once per pixel pair. */
    for (; x + 2 <= width; x += 2) {
        const int ci = (x >> 1) * c_step;
        const int uu = (u[ci] << 3) - 1024, vv = (v[ci] << 3) - 1024;
        const int rc = mulhi(vv, vr), gc = mulhi(uu, ug) + mulhi(vv, vg), bc = mulhi(uu, ub);
        put_px(d + (size_t)x * bpp, mulhi((yrow[x] << 3) - yoff, yc), rc, gc, bc, bpp, ri);
        put_px(d + (size_t)(x + 1) * bpp, mulhi((yrow[x + 1] << 3) - yoff, yc), rc, gc, bc, bpp,
               ri);
    }
    if (x < width) {
        const int ci = (x >> 1) * c_step;
        const int uu = (u[ci] << 3) - 1024, vv = (v[ci] << 3) - 1024;
        put_px(d + (size_t)x * bpp, mulhi((yrow[x] << 3) - yoff, yc), mulhi(vv, vr),
               mulhi(uu, ug) + mulhi(vv, vg), mulhi(uu, ub), bpp, ri);
    }
}

static void row_scalar(const uint8_t *yrow, const uint8_t *u, const uint8_t *v, int c_step,
                       uint8_t *d, int x0, int width, int out_format, const oys_coeffs *c)
{
    switch (out_format) {
    case OYS_RGB24: row_scalar_fmt(yrow, u, v, c_step, d, x0, width, c, 3, 0); break;
    case OYS_BGR24: row_scalar_fmt(yrow, u, v, c_step, d, x0, width, c, 3, 2); break;
    default: row_scalar_fmt(yrow, u, v, c_step, d, x0, width, c, 4, 0); break;
    }
}

#if OYS_X86

/* ---------------------------------------------------------------- SSE2 tier */

/* Math on 16 px in 16-bit lanes (even / odd pixels apart, like swscale), then
 * pack to three pixel-ordered byte vectors; interleaving is scalar since SSE2
 * has no pshufb. Pixels [0, n16*16) of the row; the caller does the tail. */
static void row_sse2(const uint8_t *yrow, const uint8_t *u, const uint8_t *v, int c_step,
                     uint8_t *d, int width, int out_format, const oys_coeffs *c)
{
    const __m128i yc = _mm_set1_epi16(c->yc), yoff = _mm_set1_epi16(c->yoff);
    const __m128i vr = _mm_set1_epi16(c->vr), ub = _mm_set1_epi16(c->ub);
    const __m128i ug = _mm_set1_epi16(c->ug), vg = _mm_set1_epi16(c->vg);
    const __m128i coff = _mm_set1_epi16(1024), lo = _mm_set1_epi16(0x00FF);
    const __m128i zero = _mm_setzero_si128();
    const int bpp = out_format == OYS_RGBA ? 4 : 3;
    const int ri = out_format == OYS_BGR24 ? 2 : 0, bi = 2 - ri;
    (void)bi;
    for (int x = 0; x + 16 <= width; x += 16) {
        __m128i uu, vv;
        if (c_step == 1) {
            uu = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(u + x / 2)), zero);
            vv = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(v + x / 2)), zero);
        } else {
            const __m128i uv = _mm_loadu_si128((const __m128i *)(u + x));
            uu = _mm_and_si128(uv, lo);
            vv = _mm_srli_epi16(uv, 8);
        }
        uu = _mm_sub_epi16(_mm_slli_epi16(uu, 3), coff);
        vv = _mm_sub_epi16(_mm_slli_epi16(vv, 3), coff);
        const __m128i rc = _mm_mulhi_epi16(vv, vr);
        const __m128i gc = _mm_adds_epi16(_mm_mulhi_epi16(uu, ug), _mm_mulhi_epi16(vv, vg));
        const __m128i bc = _mm_mulhi_epi16(uu, ub);
        const __m128i yv = _mm_loadu_si128((const __m128i *)(yrow + x));
        const __m128i ye = _mm_mulhi_epi16(_mm_sub_epi16(_mm_slli_epi16(_mm_and_si128(yv, lo), 3), yoff), yc);
        const __m128i yo = _mm_mulhi_epi16(_mm_sub_epi16(_mm_slli_epi16(_mm_srli_epi16(yv, 8), 3), yoff), yc);
        /* packus -> [e0..e7 o0..o7]; unpack with its upper half -> pixel order */
        __m128i r = _mm_packus_epi16(_mm_adds_epi16(ye, rc), _mm_adds_epi16(yo, rc));
        __m128i g = _mm_packus_epi16(_mm_adds_epi16(ye, gc), _mm_adds_epi16(yo, gc));
        __m128i b = _mm_packus_epi16(_mm_adds_epi16(ye, bc), _mm_adds_epi16(yo, bc));
        r = _mm_unpacklo_epi8(r, _mm_srli_si128(r, 8));
        g = _mm_unpacklo_epi8(g, _mm_srli_si128(g, 8));
        b = _mm_unpacklo_epi8(b, _mm_srli_si128(b, 8));
        uint8_t *p = d + (size_t)x * bpp;
        if (bpp == 4) {
            /* RGBA interleaves cleanly with unpacks. */
            const __m128i a = _mm_set1_epi8((char)0xFF);
            const __m128i rg0 = _mm_unpacklo_epi8(r, g), rg1 = _mm_unpackhi_epi8(r, g);
            const __m128i ba0 = _mm_unpacklo_epi8(b, a), ba1 = _mm_unpackhi_epi8(b, a);
            _mm_storeu_si128((__m128i *)(p + 0), _mm_unpacklo_epi16(rg0, ba0));
            _mm_storeu_si128((__m128i *)(p + 16), _mm_unpackhi_epi16(rg0, ba0));
            _mm_storeu_si128((__m128i *)(p + 32), _mm_unpacklo_epi16(rg1, ba1));
            _mm_storeu_si128((__m128i *)(p + 48), _mm_unpackhi_epi16(rg1, ba1));
        } else {
            /* Build 0x00BBGGRR words with unpacks, then squeeze each group of
             * four into 12 bytes with 64-bit shifts (SSE2 has no byte shuffle):
             * qword = w0 | w1 << 24, then the upper qword moves down 2 bytes. */
            const __m128i z = _mm_setzero_si128();
            const __m128i rr = ri ? b : r, bb = ri ? r : b;
            const __m128i rg0 = _mm_unpacklo_epi8(rr, g), rg1 = _mm_unpackhi_epi8(rr, g);
            const __m128i b0 = _mm_unpacklo_epi8(bb, z), b1 = _mm_unpackhi_epi8(bb, z);
            const __m128i w[4] = {_mm_unpacklo_epi16(rg0, b0), _mm_unpackhi_epi16(rg0, b0),
                                  _mm_unpacklo_epi16(rg1, b1), _mm_unpackhi_epi16(rg1, b1)};
            const __m128i lo32 = _mm_set_epi32(0, -1, 0, -1);
            const __m128i lo64 = _mm_set_epi32(0, 0, -1, -1);
            for (int i = 0; i < 4; i++) {
                const __m128i q = _mm_or_si128(_mm_and_si128(w[i], lo32),
                                               _mm_srli_epi64(_mm_andnot_si128(lo32, w[i]), 8));
                const __m128i packed = _mm_or_si128(_mm_and_si128(q, lo64),
                                                    _mm_srli_si128(_mm_andnot_si128(lo64, q), 2));
                if (i < 3) {
                    /* 16-byte store; its 4 surplus bytes are overwritten next. */
                    _mm_storeu_si128((__m128i *)(p + 12 * i), packed);
                } else {
                    /* Last group: exactly 12 bytes, never past the block. */
                    _mm_storel_epi64((__m128i *)(p + 36), packed);
                    const int32_t tail = _mm_cvtsi128_si32(_mm_srli_si128(packed, 8));
                    memcpy(p + 44, &tail, 4);
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- AVX2 tier */

/* Shuffle masks, one 16-byte pattern per 128-bit lane (repeated in both lanes).
 * Inputs per lane are packus(even, odd) = [e0..e7 o0..o7]: pixel p sits at
 * byte p/2 if p is even, 8 + p/2 if odd. 0x80 = zero. Built once at first use. */
static uint8_t k_rgb24_mask[3][3][32]; /* [out chunk][channel][byte] */
static uint8_t k_rgba_mask[4][3][32];
/* Natural pixel order (resampler): 16 px of R, G, B -> 48 bytes; [chunk][channel][byte]. */
static uint8_t k_rgb24_nat[3][3][16];
static volatile int k_masks_ready = 0;

static void build_masks(void)
{
    if (k_masks_ready) return; /* idempotent; racing threads write identical bytes */
    for (int chunk = 0; chunk < 4; chunk++)
        for (int ch = 0; ch < 3; ch++)
            for (int b = 0; b < 32; b++) {
                const int bb = chunk * 16 + (b & 15);
                if (chunk < 3) {
                    const int p = bb / 3, cc = bb % 3;
                    k_rgb24_mask[chunk][ch][b] =
                        (uint8_t)(cc == ch ? ((p & 1) ? 8 + p / 2 : p / 2) : 0x80);
                }
                const int p4 = bb / 4, c4 = bb % 4;
                k_rgba_mask[chunk][ch][b] =
                    (uint8_t)(c4 == ch ? ((p4 & 1) ? 8 + p4 / 2 : p4 / 2) : 0x80);
            }
    for (int chunk = 0; chunk < 3; chunk++)
        for (int b = 0; b < 16; b++) {
            const int n = chunk * 16 + b;
            for (int ch = 0; ch < 3; ch++)
                k_rgb24_nat[chunk][ch][b] = (uint8_t)(n % 3 == ch ? n / 3 : 0x80);
        }
    k_masks_ready = 1;
}

__attribute__((target("avx2"))) static void
rows_avx2(const uint8_t *y0, const uint8_t *y1, const uint8_t *u, const uint8_t *v, int c_step,
          uint8_t *d0, uint8_t *d1, int nrows, int x0, int width, int out_format,
          const oys_coeffs *c)
{
    const __m256i yc = _mm256_set1_epi16(c->yc), yoff = _mm256_set1_epi16(c->yoff);
    const __m256i vr = _mm256_set1_epi16(c->vr), ub = _mm256_set1_epi16(c->ub);
    const __m256i ug = _mm256_set1_epi16(c->ug), vg = _mm256_set1_epi16(c->vg);
    const __m256i coff = _mm256_set1_epi16(1024), lo = _mm256_set1_epi16(0x00FF);
    const int bgr = out_format == OYS_BGR24;
    for (int x = x0; x + 32 <= width; x += 32) {
        __m256i uu, vv;
        if (c_step == 1) {
            uu = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(u + x / 2)));
            vv = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(v + x / 2)));
        } else {
            /* NV12: 16 UV pairs; chroma lane k pairs with luma word k in both layouts. */
            const __m256i uv = _mm256_loadu_si256((const __m256i *)(u + x));
            uu = _mm256_and_si256(uv, lo);
            vv = _mm256_srli_epi16(uv, 8);
        }
        uu = _mm256_sub_epi16(_mm256_slli_epi16(uu, 3), coff);
        vv = _mm256_sub_epi16(_mm256_slli_epi16(vv, 3), coff);
        const __m256i rc = _mm256_mulhi_epi16(vv, vr);
        const __m256i gc =
            _mm256_adds_epi16(_mm256_mulhi_epi16(uu, ug), _mm256_mulhi_epi16(vv, vg));
        const __m256i bc = _mm256_mulhi_epi16(uu, ub);
        /* Both rows of the pair share these chroma terms. */
        for (int row = 0; row < nrows; row++) {
            const uint8_t *yrow = row ? y1 : y0;
            uint8_t *d = row ? d1 : d0;
            /* cvtepu8 put chroma 0..7 in lane 0 and 8..15 in lane 1, matching the
             * luma words of pixels 0..15 / 16..31 of this 32-byte load. */
            const __m256i yv = _mm256_loadu_si256((const __m256i *)(yrow + x));
            const __m256i ye = _mm256_mulhi_epi16(
                _mm256_sub_epi16(_mm256_slli_epi16(_mm256_and_si256(yv, lo), 3), yoff), yc);
            const __m256i yo = _mm256_mulhi_epi16(
                _mm256_sub_epi16(_mm256_slli_epi16(_mm256_srli_epi16(yv, 8), 3), yoff), yc);
            __m256i r = _mm256_packus_epi16(_mm256_adds_epi16(ye, rc), _mm256_adds_epi16(yo, rc));
            const __m256i g =
                _mm256_packus_epi16(_mm256_adds_epi16(ye, gc), _mm256_adds_epi16(yo, gc));
            __m256i b = _mm256_packus_epi16(_mm256_adds_epi16(ye, bc), _mm256_adds_epi16(yo, bc));
            if (bgr) {
                const __m256i t = r;
                r = b;
                b = t;
            }
            if (out_format != OYS_RGBA) {
                __m256i t[3];
                for (int k = 0; k < 3; k++) {
                    t[k] = _mm256_or_si256(
                        _mm256_or_si256(
                            _mm256_shuffle_epi8(r, _mm256_loadu_si256((const __m256i *)k_rgb24_mask[k][0])),
                            _mm256_shuffle_epi8(g, _mm256_loadu_si256((const __m256i *)k_rgb24_mask[k][1]))),
                        _mm256_shuffle_epi8(b, _mm256_loadu_si256((const __m256i *)k_rgb24_mask[k][2])));
                }
                /* t[k] = [chunk k of px 0..15 | chunk k of px 16..31]; reorder to 96 bytes. */
                uint8_t *p = d + (size_t)x * 3;
                _mm256_storeu_si256((__m256i *)(p + 0), _mm256_permute2x128_si256(t[0], t[1], 0x20));
                _mm256_storeu_si256((__m256i *)(p + 32), _mm256_permute2x128_si256(t[2], t[0], 0x30));
                _mm256_storeu_si256((__m256i *)(p + 64), _mm256_permute2x128_si256(t[1], t[2], 0x31));
            } else {
                const __m256i alpha = _mm256_set1_epi32((int)0xFF000000u);
                __m256i t[4];
                for (int k = 0; k < 4; k++) {
                    t[k] = _mm256_or_si256(
                        _mm256_or_si256(
                            _mm256_shuffle_epi8(r, _mm256_loadu_si256((const __m256i *)k_rgba_mask[k][0])),
                            _mm256_shuffle_epi8(g, _mm256_loadu_si256((const __m256i *)k_rgba_mask[k][1]))),
                        _mm256_or_si256(
                            _mm256_shuffle_epi8(b, _mm256_loadu_si256((const __m256i *)k_rgba_mask[k][2])),
                            alpha));
                }
                uint8_t *p = d + (size_t)x * 4;
                _mm256_storeu_si256((__m256i *)(p + 0), _mm256_permute2x128_si256(t[0], t[1], 0x20));
                _mm256_storeu_si256((__m256i *)(p + 32), _mm256_permute2x128_si256(t[2], t[3], 0x20));
                _mm256_storeu_si256((__m256i *)(p + 64), _mm256_permute2x128_si256(t[0], t[1], 0x31));
                _mm256_storeu_si256((__m256i *)(p + 96), _mm256_permute2x128_si256(t[2], t[3], 0x31));
            }
        }
    }
}


    /* ------------------------------------------------------------- AVX-512 tier */

    /* AVX-512BW + VBMI: 64 px per iteration, and two output rows per chroma row, so
     * the chroma terms are computed once per 2×64 block. Packing uses VBMI's
     * two-source byte permute (vpermt2b: R and G in one op) plus one masked byte
     * permute for B -- 2 shuffles per 64 output bytes instead of AVX2's 6. */
    static uint8_t k512_rg_idx[4][64];  /* [out chunk][byte]: R index, or G index | 64 */
    static uint8_t k512_b_idx[4][64];   /* B index */
    static uint64_t k512_b_mask[2][4];  /* [rgb24, rgba][chunk]: bytes taking B */
    static uint64_t k512_a_mask[4];     /* rgba alpha bytes */

    static int src_index_512(int p)
    {
        /* packus(even, odd) per 128-bit lane: pixel p (0..63) sits in lane p/16 at
         * q/2 (q = p%16 even) or 8 + q/2 (odd). */
        const int q = p & 15;
        return (p & ~15) + ((q & 1) ? 8 + q / 2 : q / 2);
    }

    static void build_masks_512(void)
    {
        for (int rgba = 0; rgba < 2; rgba++) {
            const int bpp = rgba ? 4 : 3;
            for (int chunk = 0; chunk < 4; chunk++) {
                uint64_t bm = 0, am = 0;
                for (int b = 0; b < 64; b++) {
                    const int gb = chunk * 64 + b, p = gb / bpp, ch = gb % bpp;
                    if (p >= 64) continue;
                    const int si = src_index_512(p);
                    if (ch == 2) bm |= (uint64_t)1 << b;
                    if (ch == 3) am |= (uint64_t)1 << b;
                    if (!rgba) {
                        k512_rg_idx[chunk][b] = (uint8_t)(ch == 1 ? si | 64 : si);
                        k512_b_idx[chunk][b] = (uint8_t)si;
                    }
                }
                k512_b_mask[rgba][chunk] = bm;
                if (rgba) k512_a_mask[chunk] = am;
            }
        }
    }

    /* RGBA index tables (separate: different pixel-per-chunk mapping). */
    static uint8_t k512_rgba_rg_idx[4][64];
    static uint8_t k512_rgba_b_idx[4][64];

    static void build_masks_512_rgba(void)
    {
        for (int chunk = 0; chunk < 4; chunk++)
            for (int b = 0; b < 64; b++) {
                const int gb = chunk * 64 + b, p = gb / 4, ch = gb % 4;
                const int si = src_index_512(p);
                k512_rgba_rg_idx[chunk][b] = (uint8_t)(ch == 1 ? si | 64 : si);
                k512_rgba_b_idx[chunk][b] = (uint8_t)si;
            }
    }

    __attribute__((target("avx512f,avx512bw,avx512vbmi"))) static void
    rows_avx512(const uint8_t *y0, const uint8_t *y1, const uint8_t *u, const uint8_t *v,
                int c_step, uint8_t *d0, uint8_t *d1, int nrows, int width, int out_format,
                const oys_coeffs *c)
    {
        const __m512i yc = _mm512_set1_epi16(c->yc), yoff = _mm512_set1_epi16(c->yoff);
        const __m512i vr = _mm512_set1_epi16(c->vr), ub = _mm512_set1_epi16(c->ub);
        const __m512i ug = _mm512_set1_epi16(c->ug), vg = _mm512_set1_epi16(c->vg);
        const __m512i coff = _mm512_set1_epi16(1024), lo = _mm512_set1_epi16(0x00FF);
        const int rgba = out_format == OYS_RGBA, bgr = out_format == OYS_BGR24;
        const int bpp = rgba ? 4 : 3, nchunks = rgba ? 4 : 3;
        __m512i rg_idx[4], b_idx[4];
        __mmask64 b_mask[4], a_mask[4];
        for (int k = 0; k < nchunks; k++) {
            rg_idx[k] = _mm512_loadu_si512(rgba ? k512_rgba_rg_idx[k] : k512_rg_idx[k]);
            b_idx[k] = _mm512_loadu_si512(rgba ? k512_rgba_b_idx[k] : k512_b_idx[k]);
            b_mask[k] = (__mmask64)k512_b_mask[rgba][k];
            a_mask[k] = (__mmask64)(rgba ? k512_a_mask[k] : 0);
        }
        const __m512i ff = _mm512_set1_epi8((char)0xFF);
        for (int x = 0; x + 64 <= width; x += 64) {
            __m512i uu, vv;
            if (c_step == 1) {
                uu = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(u + x / 2)));
                vv = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(v + x / 2)));
            } else {
                const __m512i uv = _mm512_loadu_si512(u + x);
                uu = _mm512_and_si512(uv, lo);
                vv = _mm512_srli_epi16(uv, 8);
            }
            uu = _mm512_sub_epi16(_mm512_slli_epi16(uu, 3), coff);
            vv = _mm512_sub_epi16(_mm512_slli_epi16(vv, 3), coff);
            const __m512i rc = _mm512_mulhi_epi16(vv, vr);
            const __m512i gc =
                _mm512_adds_epi16(_mm512_mulhi_epi16(uu, ug), _mm512_mulhi_epi16(vv, vg));
            const __m512i bc = _mm512_mulhi_epi16(uu, ub);
            for (int r = 0; r < nrows; r++) {
                const uint8_t *yrow = r ? y1 : y0;
                uint8_t *p = (r ? d1 : d0) + (size_t)x * bpp;
                const __m512i yv = _mm512_loadu_si512(yrow + x);
                const __m512i ye = _mm512_mulhi_epi16(
                    _mm512_sub_epi16(_mm512_slli_epi16(_mm512_and_si512(yv, lo), 3), yoff), yc);
                const __m512i yo = _mm512_mulhi_epi16(
                    _mm512_sub_epi16(_mm512_slli_epi16(_mm512_srli_epi16(yv, 8), 3), yoff), yc);
                __m512i R = _mm512_packus_epi16(_mm512_adds_epi16(ye, rc), _mm512_adds_epi16(yo, rc));
                const __m512i G =
                    _mm512_packus_epi16(_mm512_adds_epi16(ye, gc), _mm512_adds_epi16(yo, gc));
                __m512i B = _mm512_packus_epi16(_mm512_adds_epi16(ye, bc), _mm512_adds_epi16(yo, bc));
                if (bgr) {
                    const __m512i t = R;
                    R = B;
                    B = t;
                }
                for (int k = 0; k < nchunks; k++) {
                    __m512i t = _mm512_permutex2var_epi8(R, rg_idx[k], G);
                    t = _mm512_mask_permutexvar_epi8(t, b_mask[k], b_idx[k], B);
                    if (rgba) t = _mm512_mask_mov_epi8(t, a_mask[k], ff);
                    _mm512_storeu_si512(p + 64 * k, t);
                }
        }
    }
}

/* ------------------------------------------------------- resampler, AVX2 tier */

/* Prefetch cursor over the source rows of the next band: while one band is in its
 * compute-bound phases (horizontal pass, conversion), the next band's rows stream in
 * from memory, so reading a frame fresh from the decoder overlaps the arithmetic. */
typedef struct {
    const uint8_t *base[3];
    ptrdiff_t stride[3];
    int rows[3], bytes[3];
    int p, r, x;
} oys_prefetch;

static inline void prefetch_step(oys_prefetch *c, int lines)
{
    while (lines-- > 0 && c->p < 3) {
        _mm_prefetch((const char *)(c->base[c->p] + c->r * c->stride[c->p] + c->x), _MM_HINT_T0);
        c->x += 64;
        if (c->x >= c->bytes[c->p]) {
            c->x = 0;
            if (++c->r >= c->rows[c->p]) {
                c->r = 0;
                c->p++;
            }
        }
    }
}

/* In-place transpose of a 16 x 16 block of 16-bit values (row k -> column k). */
__attribute__((target("avx2"))) static inline void transpose16(__m256i *m)
{
    __m256i t[16], s[16];
    for (int h = 0; h < 2; h++) { /* rows 0-7, then rows 8-15: 8x8 in each 128-bit lane */
        const __m256i *a = m + 8 * h;
        __m256i b[8], c[8];
        for (int i = 0; i < 4; i++) {
            b[2 * i] = _mm256_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
            b[2 * i + 1] = _mm256_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
        }
        c[0] = _mm256_unpacklo_epi32(b[0], b[2]);
        c[1] = _mm256_unpackhi_epi32(b[0], b[2]);
        c[2] = _mm256_unpacklo_epi32(b[1], b[3]);
        c[3] = _mm256_unpackhi_epi32(b[1], b[3]);
        c[4] = _mm256_unpacklo_epi32(b[4], b[6]);
        c[5] = _mm256_unpackhi_epi32(b[4], b[6]);
        c[6] = _mm256_unpacklo_epi32(b[5], b[7]);
        c[7] = _mm256_unpackhi_epi32(b[5], b[7]);
        __m256i *d = h ? s : t;
        for (int i = 0; i < 4; i++) {
            d[2 * i] = _mm256_unpacklo_epi64(c[i], c[i + 4]);
            d[2 * i + 1] = _mm256_unpackhi_epi64(c[i], c[i + 4]);
        }
    }
    /* t[c]: lane 0 = column c of rows 0-7, lane 1 = column c+8 of rows 0-7; s[c] likewise
     * for rows 8-15. */
    for (int c = 0; c < 8; c++) {
        m[c] = _mm256_permute2x128_si256(t[c], s[c], 0x20);
        m[c + 8] = _mm256_permute2x128_si256(t[c], s[c], 0x31);
    }
}

/* 16 samples of a plane row as 16-bit values; s points at the first byte to load
 * (for NV12 V, one byte before the first sample). */
__attribute__((target("avx2"))) static inline __m256i load16raw(const uint8_t *s, int step, int odd)
{
    if (step == 1) return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)s));
    const __m256i v = _mm256_loadu_si256((const __m256i *)s);
    return odd ? _mm256_srli_epi16(v, 8) : _mm256_and_si256(v, _mm256_set1_epi16(0x00FF));
}

/* (S * w) >> 8 per 16-bit lane, exact when the true result fits 16 bits: with
 * w = 256 wh + wl it is S wh + (S wl) >> 8, and (S wl) >> 8 = pmulhuw(S, wl << 8). */
__attribute__((target("avx2"))) static inline __m256i mul_shr8(__m256i S, uint16_t w)
{
    return _mm256_add_epi16(_mm256_mullo_epi16(S, _mm256_set1_epi16((short)(w >> 8))),
                            _mm256_mulhi_epu16(S, _mm256_set1_epi16((short)(w << 8))));
}

/* Sum of a run's samples for 32 I420 columns: two rows per pmaddubsw (interleaved
 * bytes times 1), so widening and adding cost one op per row pair. The lanes come out
 * as unpacklo/unpackhi order: lo = columns 0-7, 16-23; hi = 8-15, 24-31. */
__attribute__((target("avx2"))) static inline void
run_sum32(const uint8_t *s, ptrdiff_t st, int len, __m256i *lo, __m256i *hi)
{
    const __m256i ones = _mm256_set1_epi8(1), z = _mm256_setzero_si256();
    __m256i l = z, h = z;
    int i = 0;
    for (; i + 1 < len; i += 2) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(s + i * st));
        const __m256i c = _mm256_loadu_si256((const __m256i *)(s + (i + 1) * st));
        l = _mm256_add_epi16(l, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(a, c), ones));
        h = _mm256_add_epi16(h, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(a, c), ones));
    }
    if (i < len) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(s + i * st));
        l = _mm256_add_epi16(l, _mm256_unpacklo_epi8(a, z));
        h = _mm256_add_epi16(h, _mm256_unpackhi_epi8(a, z));
    }
    *lo = l;
    *hi = h;
}

/* Vertical pass over the 16-column blocks of [xlo, xhi); returns the first column not
 * done (the scalar code does the rest, so no load reads past a row's last sample).
 * For each output row and block of columns, all taps are summed in registers (a run's
 * integer sum, then one multiply per run), and the row is stored once into a row
 * accumulator; the 16 accumulators of the band are then transposed block by block. */
__attribute__((target("avx2"))) static int
vpass_avx2(const oys_plane *pl, const oys_axis *ay, int oy0, int nrows, int xlo, int xhi,
           uint16_t *rows, uint16_t *col, int transpose)
{
    const int nblk = (xhi - xlo) / 16;
    const size_t rs = (size_t)nblk * 16; /* row accumulator stride */
    if (nblk == 0) return xlo;
    const int step = pl->step, odd = pl->odd;
    const ptrdiff_t st = pl->stride;
    oys_run runs[OYS_MAX_RUNS];
    for (int k = 0; k < nrows; k++) {
        const int oy = oy0 + k;
        const int nruns = build_runs(ay->w + (size_t)oy * ay->taps, ay->taps, runs);
        if (nruns < 0) return xlo; /* pathological table: all scalar */
        const uint8_t *base = pl->p - odd + (ptrdiff_t)ay->start[oy] * st + (ptrdiff_t)xlo * step;
        uint16_t *acc_row = rows + (size_t)k * rs;
        int b = 0;
        if (step == 1) {
            /* Run by run, each a tight loop over 32-column blocks (few row streams per
             * loop), added into the row accumulator (L1). */
            const int nb32 = nblk / 2;
            for (int r = 0; r < nruns; r++) {
                const uint8_t *s = base + runs[r].t0 * st;
                const int len = runs[r].len;
                const __m256i w = _mm256_set1_epi16((short)runs[r].w);
                const __m256i z = _mm256_setzero_si256();
                for (int bb = 0; bb < nb32; bb++) {
                    __m256i lo, hi;
                    if (len == 1) { /* (v * w) >> 8 = pmulhuw(v << 8, w) */
                        const __m256i a = _mm256_loadu_si256((const __m256i *)(s + 32 * bb));
                        lo = _mm256_mulhi_epu16(_mm256_unpacklo_epi8(z, a), w);
                        hi = _mm256_mulhi_epu16(_mm256_unpackhi_epi8(z, a), w);
                    } else {
                        run_sum32(s + 32 * bb, st, len, &lo, &hi);
                        lo = mul_shr8(lo, runs[r].w);
                        hi = mul_shr8(hi, runs[r].w);
                    }
                    /* back to column order: [0-7 | 16-23], [8-15 | 24-31] -> 0-15, 16-31 */
                    __m256i c0 = _mm256_permute2x128_si256(lo, hi, 0x20);
                    __m256i c1 = _mm256_permute2x128_si256(lo, hi, 0x31);
                    __m256i *d = (__m256i *)(acc_row + 32 * bb);
                    if (r) {
                        c0 = _mm256_add_epi16(c0, _mm256_loadu_si256(d));
                        c1 = _mm256_add_epi16(c1, _mm256_loadu_si256(d + 1));
                    }
                    _mm256_storeu_si256(d, c0);
                    _mm256_storeu_si256(d + 1, c1);
                }
            }
            if (nruns == 0) memset(acc_row, 0, (size_t)nb32 * 32 * sizeof(uint16_t));
            b = 2 * nb32;
        }
        for (; b < nblk; b++) { /* 16 columns: NV12, and the last I420 block */
            const uint8_t *s0 = base + (ptrdiff_t)16 * b * step;
            __m256i acc = _mm256_setzero_si256();
            for (int r = 0; r < nruns; r++) {
                const uint8_t *s = s0 + (ptrdiff_t)runs[r].t0 * st;
                __m256i sum = load16raw(s, step, odd);
                for (int t = 1; t < runs[r].len; t++)
                    sum = _mm256_add_epi16(sum, load16raw(s + t * st, step, odd));
                acc = _mm256_add_epi16(acc, mul_shr8(sum, runs[r].w));
            }
            _mm256_storeu_si256((__m256i *)(acc_row + 16 * b), acc);
        }
    }
    for (int b = 0; transpose && b < nblk; b++) {
        __m256i m[16];
        for (int k = 0; k < 16; k++)
            m[k] = k < nrows ? _mm256_loadu_si256((const __m256i *)(rows + (size_t)k * rs + 16 * b))
                             : _mm256_setzero_si256();
        transpose16(m);
        for (int c = 0; c < 16; c++)
            _mm256_storeu_si256((__m256i *)(col + (size_t)(16 * b + c) * OYS_BAND), m[c]);
    }
    return xlo + 16 * nblk;
}

/* Horizontal pass: each output column is 16 output rows, so every tap is one
 * broadcast multiply-add over a whole vector. */
__attribute__((target("avx2"))) static void
hpass_avx2(const uint16_t *col, int xlo, const oys_axis *ax, uint16_t *out, oys_prefetch *pf,
           int pf_every)
{
    for (int j = 0; j < ax->n; j++) {
        if (j % pf_every == 0) prefetch_step(pf, 1);
        const uint16_t *c = col + (size_t)(ax->start[j] - xlo) * OYS_BAND;
        const uint16_t *w = ax->w + (size_t)j * ax->taps;
        __m256i acc = _mm256_setzero_si256();
        for (int t = 0; t < ax->taps; t++)
            acc = _mm256_add_epi16(acc, _mm256_mulhi_epu16(
                _mm256_loadu_si256((const __m256i *)(c + t * OYS_BAND)),
                _mm256_set1_epi16((short)w[t])));
        _mm256_storeu_si256((__m256i *)(out + (size_t)j * OYS_BAND), acc);
    }
}

/* Convert one band from the three column-major Q8 planes to packed pixels: blocks
 * of 16 columns are transposed back to rows, converted 16 px at a time. */
/* Row-major horizontal pass for a uniform decimation by k = 1, 2, 4 (output j reads
 * columns k j .. k j + k - 1 of the row accumulators with one weight w): no transposes.
 * Same arithmetic as hpass_scalar (each tap (c * w) >> 16, then summed). */
__attribute__((target("avx2"))) static void
hpass_rows_avx2(const uint16_t *rows, size_t rs, int nrows, int k, uint16_t w, int out_w,
                uint16_t *q, size_t qs)
{
    const __m256i wv = _mm256_set1_epi16((short)w), ones = _mm256_set1_epi16(1);
    for (int r = 0; r < nrows; r++) {
        const uint16_t *src = rows + (size_t)r * rs;
        uint16_t *dst = q + (size_t)r * qs;
        int j = 0;
        if (k == 1) {
            for (; j + 16 <= out_w; j += 16)
                _mm256_storeu_si256((__m256i *)(dst + j), _mm256_mulhi_epu16(
                    _mm256_loadu_si256((const __m256i *)(src + j)), wv));
        } else if (k == 4) {
            /* per 16 outputs: 64 columns -> pair sums (pmaddwd) -> quad sums (phaddd, in-lane
             * order) -> 16-bit -> dwords back in column order */
            const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for (; j + 16 <= out_w; j += 16) {
                __m256i m[4];
                for (int i = 0; i < 4; i++)
                    m[i] = _mm256_madd_epi16(_mm256_mulhi_epu16(
                        _mm256_loadu_si256((const __m256i *)(src + 4 * j + 16 * i)), wv), ones);
                const __m256i quads = _mm256_packus_epi32(_mm256_hadd_epi32(m[0], m[1]),
                                                          _mm256_hadd_epi32(m[2], m[3]));
                _mm256_storeu_si256((__m256i *)(dst + j),
                                    _mm256_permutevar8x32_epi32(quads, order));
            }
        } else {
            for (; j + 16 <= out_w; j += 16) {
                /* each term <= 32640, so pmaddwd's signed pair sums are exact */
                const __m256i a = _mm256_madd_epi16(_mm256_mulhi_epu16(
                    _mm256_loadu_si256((const __m256i *)(src + 2 * j)), wv), ones);
                const __m256i b = _mm256_madd_epi16(_mm256_mulhi_epu16(
                    _mm256_loadu_si256((const __m256i *)(src + 2 * j + 16)), wv), ones);
                _mm256_storeu_si256((__m256i *)(dst + j),
                                    _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
            }
        }
        for (; j < out_w; j++) {
            uint32_t acc = 0;
            for (int t = 0; t < k; t++) acc += (uint32_t)src[k * j + t] * w >> 16;
            dst[j] = (uint16_t)acc;
        }
    }
}

__attribute__((target("avx2"))) static void
convert_band_avx2(const uint16_t *qy, const uint16_t *qu, const uint16_t *qv, int nrows,
                  int out_w, uint8_t *dst, ptrdiff_t dst_stride, int out_format,
                  const oys_coeffs *c, size_t row_major_stride, oys_prefetch *pf, int pf_lines)
{
    const int bpp = out_format == OYS_RGBA ? 4 : 3, bgr = out_format == OYS_BGR24;
    const __m256i yoff = _mm256_set1_epi16((short)(c->yoff * 16)), coff = _mm256_set1_epi16(16384);
    const __m256i round = _mm256_set1_epi16(16);
    const __m256i k_yc = _mm256_set1_epi16(c->yc), k_vr = _mm256_set1_epi16(c->vr);
    const __m256i k_ub = _mm256_set1_epi16(c->ub), k_ug = _mm256_set1_epi16(c->ug);
    const __m256i k_vg = _mm256_set1_epi16(c->vg);
    __m128i mask[3][3];
    for (int q = 0; q < 3; q++)
        for (int ch = 0; ch < 3; ch++)
            mask[q][ch] = _mm_loadu_si128((const __m128i *)k_rgb24_nat[q][ch]);
    const size_t rms = row_major_stride; /* 0: column-major band buffers */
    for (int jb = 0; jb < out_w; jb += 16) {
        __m256i Y[16], U[16], V[16];
        if (!rms) {
            for (int i = 0; i < 16; i++) {
                Y[i] = _mm256_loadu_si256((const __m256i *)(qy + (size_t)(jb + i) * OYS_BAND));
                U[i] = _mm256_loadu_si256((const __m256i *)(qu + (size_t)(jb + i) * OYS_BAND));
                V[i] = _mm256_loadu_si256((const __m256i *)(qv + (size_t)(jb + i) * OYS_BAND));
            }
            transpose16(Y);
            transpose16(U);
            transpose16(V);
        }
        const int n = out_w - jb < 16 ? out_w - jb : 16;
        for (int k = 0; k < nrows; k++) {
            prefetch_step(pf, pf_lines);
            __m256i y = rms ? _mm256_loadu_si256((const __m256i *)(qy + k * rms + jb)) : Y[k];
            __m256i u = rms ? _mm256_loadu_si256((const __m256i *)(qu + k * rms + jb)) : U[k];
            __m256i v = rms ? _mm256_loadu_si256((const __m256i *)(qv + k * rms + jb)) : V[k];
            y = _mm256_sub_epi16(_mm256_srli_epi16(y, 1), yoff);
            u = _mm256_sub_epi16(_mm256_srli_epi16(u, 1), coff);
            v = _mm256_sub_epi16(_mm256_srli_epi16(v, 1), coff);
            const __m256i yt = _mm256_add_epi16(_mm256_mulhrs_epi16(y, k_yc), round);
            __m256i R = _mm256_srai_epi16(_mm256_add_epi16(yt, _mm256_mulhrs_epi16(v, k_vr)), 5);
            __m256i G = _mm256_srai_epi16(_mm256_add_epi16(yt, _mm256_add_epi16(
                _mm256_mulhrs_epi16(u, k_ug), _mm256_mulhrs_epi16(v, k_vg))), 5);
            __m256i B = _mm256_srai_epi16(_mm256_add_epi16(yt, _mm256_mulhrs_epi16(u, k_ub)), 5);
            if (bgr) {
                const __m256i tmp = R;
                R = B;
                B = tmp;
            }
            const __m128i r = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi16(R, R), 0x08));
            const __m128i g = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi16(G, G), 0x08));
            const __m128i b = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi16(B, B), 0x08));
            uint8_t tmp[64];
            uint8_t *p = n == 16 ? dst + (ptrdiff_t)k * dst_stride + (size_t)jb * bpp : tmp;
            if (bpp == 4) {
                const __m128i a = _mm_set1_epi8((char)0xFF);
                const __m128i rg0 = _mm_unpacklo_epi8(r, g), rg1 = _mm_unpackhi_epi8(r, g);
                const __m128i ba0 = _mm_unpacklo_epi8(b, a), ba1 = _mm_unpackhi_epi8(b, a);
                _mm_storeu_si128((__m128i *)(p + 0), _mm_unpacklo_epi16(rg0, ba0));
                _mm_storeu_si128((__m128i *)(p + 16), _mm_unpackhi_epi16(rg0, ba0));
                _mm_storeu_si128((__m128i *)(p + 32), _mm_unpacklo_epi16(rg1, ba1));
                _mm_storeu_si128((__m128i *)(p + 48), _mm_unpackhi_epi16(rg1, ba1));
            } else {
                for (int q = 0; q < 3; q++)
                    _mm_storeu_si128((__m128i *)(p + 16 * q), _mm_or_si128(
                        _mm_or_si128(_mm_shuffle_epi8(r, mask[q][0]), _mm_shuffle_epi8(g, mask[q][1])),
                        _mm_shuffle_epi8(b, mask[q][2])));
            }
            if (n < 16) memcpy(dst + (ptrdiff_t)k * dst_stride + (size_t)jb * bpp, tmp, (size_t)n * bpp);
        }
    }
}

static int detect_level(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi"))
        return OYS_LEVEL_AVX512;
    if (__builtin_cpu_supports("avx2")) return OYS_LEVEL_AVX2;
    if (__builtin_cpu_supports("sse2")) return OYS_LEVEL_SSE2;
    return OYS_LEVEL_SCALAR;
}
#else
static int detect_level(void) { return OYS_LEVEL_SCALAR; }
#endif

static int g_cpu_level = -1;
static int g_level = -1;

int oys_cpu_level(void)
{
    if (g_cpu_level < 0) {
        /* Tables first, level last: a thread that sees the level sees the tables.
         * (The Python wrapper also calls this once at import, before any thread.) */
#if OYS_X86
        build_masks();
        build_masks_512();
        build_masks_512_rgba();
#endif
        const int level = detect_level();
#if defined(__GNUC__) || defined(__clang__)
        __atomic_store_n(&g_cpu_level, level, __ATOMIC_RELEASE);
#else
        g_cpu_level = level;
#endif
    }
    return g_cpu_level;
}

int oys_active_level(void)
{
    if (g_level < 0) g_level = oys_cpu_level();
    return g_level;
}

int oys_set_level(int level)
{
    const int cpu = oys_cpu_level();
    if (level < OYS_LEVEL_SCALAR) level = OYS_LEVEL_SCALAR;
    g_level = level > cpu ? cpu : level;
    return g_level;
}

int oys_convert(const uint8_t *y, ptrdiff_t y_stride,
                const uint8_t *u, const uint8_t *v, ptrdiff_t c_stride, int c_step,
                uint8_t *dst, ptrdiff_t dst_stride,
                int width, int height, int out_format, int matrix, int full_range)
{
    if (!y || !u || !v || !dst || width < 2 || height < 2) return OYS_EINVAL;
    if (out_format < OYS_RGB24 || out_format > OYS_RGBA) return OYS_EINVAL;
    if (c_step != 1 && c_step != 2) return OYS_EINVAL;
    const int bpp = out_format == OYS_RGBA ? 4 : 3;
    const int cw = (width + 1) / 2;
    if (y_stride < width || dst_stride < (ptrdiff_t)width * bpp) return OYS_EINVAL;
    if (c_stride < (ptrdiff_t)(c_step == 1 ? cw : 2 * cw)) return OYS_EINVAL;

    oys_coeffs c;
    make_coeffs(matrix, full_range, &c);
    const int level = oys_active_level();
    (void)level; /* only SIMD builds look at it */
    /* Rows go in pairs because both rows of a pair share one chroma row. */
    for (int row = 0; row < height; row += 2) {
        const int nrows = row + 1 < height ? 2 : 1;
        const uint8_t *ur = u + (row >> 1) * c_stride;
        const uint8_t *vr = v + (row >> 1) * c_stride;
        const uint8_t *yr[2] = {y + row * y_stride, y + (row + nrows - 1) * y_stride};
        uint8_t *dr[2] = {dst + row * dst_stride, dst + (row + nrows - 1) * dst_stride};
        int done = 0;
#if OYS_X86
        if (level >= OYS_LEVEL_AVX512) {
            rows_avx512(yr[0], yr[1], ur, vr, c_step, dr[0], dr[1], nrows, width, out_format, &c);
            done = width & ~63;
        }
        if (level >= OYS_LEVEL_AVX2 && done + 32 <= width) {
            rows_avx2(yr[0], yr[1], ur, vr, c_step, dr[0], dr[1], nrows, done, width, out_format,
                      &c);
            done = width & ~31;
        }
#endif
        for (int r = 0; r < nrows; r++) {
            int x = done;
#if OYS_X86
            if (level == OYS_LEVEL_SSE2) {
                row_sse2(yr[r], ur, vr, c_step, dr[r], width, out_format, &c);
                x = width & ~15;
            }
#endif
            if (x < width) row_scalar(yr[r], ur, vr, c_step, dr[r], x, width, out_format, &c);
        }
    }
    return OYS_OK;
}

/* ------------------------------------------------------------- resampler */

static int axis_ok(const oys_axis *a, int extent)
{
    if (!a->start || !a->w || a->n < 1 || a->taps < 1 || a->taps > extent) return 0;
    int prev = 0;
    for (int i = 0; i < a->n; i++) {
        const int s = a->start[i];
        if (s < prev || s > extent - a->taps) return 0; /* nondecreasing, inside the plane */
        prev = s;
    }
    return 1;
}

/* Vertical pass for output rows oy0 .. oy0+nrows-1 and source columns [x0, x1), into
 * the column-major band buffer col[(x - xlo) * 16 + k] (rows k >= nrows zero). Values
 * are Q8: the sum over runs of (sum of the run's samples * w) >> 8 (see build_runs).
 * Rows are streamed whole (contiguous loops the compiler vectorises, NEON included);
 * sum and acc are two rows of work space of at least x1 - x0 elements. */
static void vpass_scalar(const oys_plane *pl, const oys_axis *ay, int oy0, int nrows, int xlo,
                         int x0, int x1, uint16_t *col, uint16_t *restrict sum,
                         uint16_t *restrict acc)
{
    oys_run runs[OYS_MAX_RUNS];
    const int n = x1 - x0, step = pl->step;
    for (int k = 0; k < OYS_BAND; k++) {
        uint16_t *dk = col + (size_t)(x0 - xlo) * OYS_BAND + k;
        if (k >= nrows) {
            for (int x = 0; x < n; x++) dk[(size_t)x * OYS_BAND] = 0;
            continue;
        }
        const int oy = oy0 + k;
        const uint16_t *w = ay->w + (size_t)oy * ay->taps;
        const uint8_t *row = pl->p + (ptrdiff_t)ay->start[oy] * pl->stride + (ptrdiff_t)x0 * step;
        const int nruns = build_runs(w, ay->taps, runs);
        for (int x = 0; x < n; x++) acc[x] = 0;
        if (nruns >= 0) {
            for (int r = 0; r < nruns; r++) {
                for (int x = 0; x < n; x++) sum[x] = 0;
                for (int t = runs[r].t0; t < runs[r].t0 + runs[r].len; t++) {
                    const uint8_t *s = row + (ptrdiff_t)t * pl->stride;
                    if (step == 1)
                        for (int x = 0; x < n; x++) sum[x] = (uint16_t)(sum[x] + s[x]);
                    else
                        for (int x = 0; x < n; x++) sum[x] = (uint16_t)(sum[x] + s[2 * x]);
                }
                const uint32_t rw = runs[r].w;
                for (int x = 0; x < n; x++) acc[x] = (uint16_t)(acc[x] + ((sum[x] * rw) >> 8));
            }
        } else { /* more runs than the cap (no table of ours): one tap at a time */
            for (int t = 0; t < ay->taps; t++) {
                const uint8_t *s = row + (ptrdiff_t)t * pl->stride;
                const uint32_t tw = w[t];
                for (int x = 0; x < n; x++)
                    acc[x] = (uint16_t)(acc[x] + ((s[(ptrdiff_t)x * step] * tw) >> 8));
            }
        }
        for (int x = 0; x < n; x++) dk[(size_t)x * OYS_BAND] = acc[x];
    }
}

static void hpass_scalar(const uint16_t *col, int xlo, const oys_axis *ax, int j0,
                         uint16_t *out)
{
    for (int j = j0; j < ax->n; j++) {
        const uint16_t *c = col + (size_t)(ax->start[j] - xlo) * OYS_BAND;
        const uint16_t *w = ax->w + (size_t)j * ax->taps;
        uint16_t acc[OYS_BAND] = {0};
        for (int t = 0; t < ax->taps; t++) {
            const uint32_t tw = w[t];
            for (int k = 0; k < OYS_BAND; k++)
                acc[k] = (uint16_t)(acc[k] + ((c[t * OYS_BAND + k] * tw) >> 16));
        }
        memcpy(out + (size_t)j * OYS_BAND, acc, sizeof acc);
    }
}

/* pmulhrsw: (a * b + 2^14) >> 15, a and b int16. */
static inline int mulhrs(int a, int b) { return (a * b + (1 << 14)) >> 15; }

/* Q8 Y, U, V -> rounded RGB. Q7 inputs (offsets removed) times 3.13 coefficients with
 * pmulhrsw give Q5 terms (each rounded, so the sum is within 0.05 of exact), then
 * (sum + 16) >> 5. All terms fit 16 bits. The SIMD tier does exactly this. One band row
 * at a time is first gathered out of the column-major buffers into contiguous rows
 * (row[3][out_w] of work space), so the conversion loop vectorises. */
static void convert_band_scalar(const uint16_t *qy, const uint16_t *qu, const uint16_t *qv,
                                int nrows, int out_w, uint8_t *dst, ptrdiff_t dst_stride,
                                int out_format, const oys_coeffs *c, uint16_t *restrict row)
{
    const int bpp = out_format == OYS_RGBA ? 4 : 3, ri = out_format == OYS_BGR24 ? 2 : 0;
    uint16_t *restrict ry = row, *restrict ru = row + out_w, *restrict rv = row + 2 * (size_t)out_w;
    const int yc = c->yc, vr = c->vr, ug = c->ug, vg = c->vg, ub = c->ub, yo = c->yoff * 16;
    for (int k = 0; k < nrows; k++) {
        for (int j = 0; j < out_w; j++) {
            ry[j] = qy[(size_t)j * OYS_BAND + k];
            ru[j] = qu[(size_t)j * OYS_BAND + k];
            rv[j] = qv[(size_t)j * OYS_BAND + k];
        }
        uint8_t *restrict d = dst + (ptrdiff_t)k * dst_stride;
        for (int j = 0; j < out_w; j++) {
            const int yt = mulhrs((ry[j] >> 1) - yo, yc) + 16;
            const int uu = (ru[j] >> 1) - 16384, vv = (rv[j] >> 1) - 16384;
            uint8_t *p = d + (size_t)j * bpp;
            p[ri] = clamp_u8((yt + mulhrs(vv, vr)) >> 5);
            p[1] = clamp_u8((yt + mulhrs(uu, ug) + mulhrs(vv, vg)) >> 5);
            p[2 - ri] = clamp_u8((yt + mulhrs(uu, ub)) >> 5);
            if (bpp == 4) p[3] = 255;
        }
    }
}

#if OYS_X86
/* k if output j reads columns start[0] + k j .. + k - 1 with one weight for all, k = 1, 2, 4. */
static int uniform_step(const oys_axis *a)
{
    const int k = a->taps;
    if (k != 1 && k != 2 && k != 4) return 0;
    for (int j = 0; j < a->n; j++) {
        if (a->start[j] != a->start[0] + k * j) return 0;
        for (int t = 0; t < k; t++)
            if (a->w[(size_t)j * k + t] != a->w[0]) return 0;
    }
    return k;
}

/* Every output row's taps group into at most OYS_MAX_RUNS runs (the SIMD vertical pass). */
static int runs_fit(const oys_axis *a)
{
    oys_run runs[OYS_MAX_RUNS];
    for (int i = 0; i < a->n; i++)
        if (build_runs(a->w + (size_t)i * a->taps, a->taps, runs) < 0) return 0;
    return 1;
}
#endif

size_t oys_resample_scratch(int src_w, int out_w)
{
    if (src_w < 0 || out_w < 0) return 0;
    /* row accumulators (SIMD vertical pass), the column-major band, 3 output planes,
     * 3 rows for the scalar conversion */
    const size_t padded_w = ((size_t)out_w + OYS_BAND - 1) / OYS_BAND * OYS_BAND;
    return (2 * (size_t)OYS_BAND + 1) * ((size_t)src_w + 2 * OYS_BAND) +
           3 * padded_w * OYS_BAND + 3 * padded_w;
}

int oys_resample(const uint8_t *y, ptrdiff_t y_stride,
                 const uint8_t *u, const uint8_t *v, ptrdiff_t c_stride, int c_step,
                 int src_w, int src_h,
                 uint8_t *dst, ptrdiff_t dst_stride, int out_w, int out_h,
                 int out_format, int matrix, int full_range,
                 const int32_t *lx_start, const uint16_t *lx_w, int lx_taps,
                 const int32_t *ly_start, const uint16_t *ly_w, int ly_taps,
                 const int32_t *cx_start, const uint16_t *cx_w, int cx_taps,
                 const int32_t *cy_start, const uint16_t *cy_w, int cy_taps,
                 uint16_t *scratch, size_t scratch_len)
{
    if (!y || !u || !v || !dst || !scratch || src_w < 2 || src_h < 2 || out_w < 1 || out_h < 1)
        return OYS_EINVAL;
    if (out_format < OYS_RGB24 || out_format > OYS_RGBA) return OYS_EINVAL;
    if (c_step != 1 && c_step != 2) return OYS_EINVAL;
    const int bpp = out_format == OYS_RGBA ? 4 : 3;
    const int cw = (src_w + 1) / 2, ch = (src_h + 1) / 2;
    if (y_stride < src_w || dst_stride < (ptrdiff_t)out_w * bpp) return OYS_EINVAL;
    if (c_stride < (ptrdiff_t)(c_step == 1 ? cw : 2 * cw)) return OYS_EINVAL;
    const oys_axis lx = {lx_start, lx_w, lx_taps, out_w}, ly = {ly_start, ly_w, ly_taps, out_h};
    const oys_axis cx = {cx_start, cx_w, cx_taps, out_w}, cy = {cy_start, cy_w, cy_taps, out_h};
    if (!axis_ok(&lx, src_w) || !axis_ok(&ly, src_h) || !axis_ok(&cx, cw) || !axis_ok(&cy, ch))
        return OYS_EINVAL;
    if (scratch_len < oys_resample_scratch(src_w, out_w)) return OYS_EINVAL;

    oys_coeffs c;
    make_coeffs(matrix, full_range, &c);
    const int level = oys_active_level();
    (void)level;
    const size_t padded_w = ((size_t)out_w + OYS_BAND - 1) / OYS_BAND * OYS_BAND;
    const size_t span = ((size_t)src_w + 2 * OYS_BAND) * OYS_BAND;
    uint16_t *rows = scratch, *col = scratch + span + ((size_t)src_w + 2 * OYS_BAND);
    uint16_t *q[3];
    for (int p = 0; p < 3; p++) {
        q[p] = col + span + p * padded_w * OYS_BAND;
        /* Padding columns are read (never stored) by the 16-column transposes. */
        memset(q[p] + (size_t)out_w * OYS_BAND, 0, (padded_w - out_w) * OYS_BAND * sizeof(uint16_t));
    }
    const oys_plane planes[3] = {
        {y, y_stride, 1, 0},
        {u, c_stride, c_step, 0},
        {c_step == 2 ? u + 1 : v, c_stride, c_step, c_step == 2},
    };
    const oys_axis *ax[3] = {&lx, &cx, &cx}, *ay[3] = {&ly, &cy, &cy};
    int row_major = 0; /* AVX2 fast path: uniform decimation by 1, 2, 4, whole 16-column blocks */
    (void)row_major;
#if OYS_X86
    if (level >= OYS_LEVEL_AVX2) {
        row_major = uniform_step(&lx) && uniform_step(&cx) && runs_fit(&ly) && runs_fit(&cy) &&
                    (lx.start[out_w - 1] + lx.taps - lx.start[0]) % 16 == 0 &&
                    (cx.start[out_w - 1] + cx.taps - cx.start[0]) % 16 == 0;
    }
#endif

    for (int oy0 = 0; oy0 < out_h; oy0 += OYS_BAND) {
        const int nrows = out_h - oy0 < OYS_BAND ? out_h - oy0 : OYS_BAND;
#if OYS_X86
        oys_prefetch pf = {{0}, {0}, {0}, {0}, 3, 0, 0}; /* p = 3: nothing to prefetch */
        int pf_total = 0;
        if (level >= OYS_LEVEL_AVX2 && oy0 + OYS_BAND < out_h) {
            const int last = oy0 + 2 * OYS_BAND - 1 < out_h ? oy0 + 2 * OYS_BAND - 1 : out_h - 1;
            for (int p = 0; p < 3; p++) {
                const int r0 = ay[p]->start[oy0 + OYS_BAND], r1 = ay[p]->start[last] + ay[p]->taps;
                const int xlo = ax[p]->start[0], xhi = ax[p]->start[ax[p]->n - 1] + ax[p]->taps;
                pf.base[p] = planes[p].p - planes[p].odd + (ptrdiff_t)r0 * planes[p].stride +
                             (ptrdiff_t)xlo * planes[p].step;
                pf.stride[p] = planes[p].stride;
                pf.rows[p] = r1 - r0;
                pf.bytes[p] = (xhi - xlo) * planes[p].step;
                pf_total += pf.rows[p] * ((pf.bytes[p] + 63) / 64);
            }
            pf.p = 0;
        }
        /* spread over the band's work, at most 8 lines at a time (bursts stall the core) */
        int pf_row = pf_total / (OYS_BAND * ((out_w + 15) / 16) + 1) + 1;
        if (pf_row > 8) pf_row = 8;
        const int pf_col = (3 * out_w) / (pf_total / 2 + 1) + 1;
#endif
        for (int p = 0; p < 3; p++) {
            const int xlo = ax[p]->start[0], xhi = ax[p]->start[ax[p]->n - 1] + ax[p]->taps;
            int x = xlo, j = 0;
#if OYS_X86
            if (row_major) {
                vpass_avx2(&planes[p], ay[p], oy0, nrows, xlo, xhi, rows, col, 0);
                hpass_rows_avx2(rows, (size_t)(xhi - xlo), nrows, ax[p]->taps, ax[p]->w[0], out_w,
                                q[p], padded_w);
                continue;
            }
            if (level >= OYS_LEVEL_AVX2)
                x = vpass_avx2(&planes[p], ay[p], oy0, nrows, xlo, xhi, rows, col, 1);
#endif
            vpass_scalar(&planes[p], ay[p], oy0, nrows, xlo, x, xhi, col, rows,
                         rows + ((size_t)src_w + 2 * OYS_BAND));
#if OYS_X86
            if (level >= OYS_LEVEL_AVX2) {
                hpass_avx2(col, xlo, ax[p], q[p], &pf, pf_col);
                j = out_w;
            }
#endif
            hpass_scalar(col, xlo, ax[p], j, q[p]);
        }
        uint8_t *d = dst + (ptrdiff_t)oy0 * dst_stride;
#if OYS_X86
        if (level >= OYS_LEVEL_AVX2) {
            convert_band_avx2(q[0], q[1], q[2], nrows, out_w, d, dst_stride, out_format, &c,
                              row_major ? padded_w : 0, &pf, pf_row);
            continue;
        }
#endif
        convert_band_scalar(q[0], q[1], q[2], nrows, out_w, d, dst_stride, out_format, &c,
                            q[2] + padded_w * OYS_BAND);
    }
    return OYS_OK;
}

int oys_gil_probe(volatile int32_t *flag, int64_t max_spins)
{
    for (int64_t i = 0; i < max_spins; i++) {
        if (*flag) return 1;
#if OYS_X86
        _mm_pause();
#endif
    }
    return *flag ? 1 : 0;
}
