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
