/* MD5 of many independent streams at once, one SIMD lane per stream (multi-buffer MD5).
 *
 * One MD5 stream cannot be parallelized: every 64-byte block depends on the previous state, and
 * a core hashes one stream at ~0.7 GB/s. Concurrent S3 PUTs are independent streams, so a vector
 * register can carry one stream per 32-bit lane: 16 lanes with AVX-512 (native rotates and
 * three-input logic), 8 with AVX2, else one stream at a time in portable C. The same technique
 * as Intel's isa-l_crypto md5_mb and MinIO's md5-simd (neither is packaged for Python or Debian,
 * hence this module; see docs/ARCHITECTURE.md "MD5 ETags in SIMD lanes").
 *
 * The Python side (kvstore/api/s3/md5lanes.py) keeps each stream's state, tail and length and
 * does the final padding; this module only runs the compression function over whole blocks:
 *
 *     compress(states, datas, kernel="")
 *
 * states: writable buffers of 16 bytes (A, B, C, D little-endian, as MD5 keeps them); datas:
 * buffers whose lengths are multiples of 64; kernel:
 * "" picks the default, "c", "avx2", "avx512vl" or "avx512" force one (tests cover every
 * kernel this CPU runs). The GIL is released while hashing (but for a call of under 8 KiB);
 * the caller must not change the buffers meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MD5L_X86 1
#endif

#define STREAMS_MAX 256 /* streams in one call; kvstore.limits.s3_md5_lane_streams_max */
/* under this many bytes the GIL is kept: taking it back on a busy event loop costs more than
 * hashing a few blocks (~1.5 us per KiB) */
#define GIL_RELEASE_BYTES_MIN 8192

static const uint32_t T[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391};

/* the message word each step reads, and its rotation */
#define MD5L_ROUNDS(STEP)                                                                       \
    STEP(F, a, b, c, d, 0, 7, 0) STEP(F, d, a, b, c, 1, 12, 1) STEP(F, c, d, a, b, 2, 17, 2)      \
    STEP(F, b, c, d, a, 3, 22, 3) STEP(F, a, b, c, d, 4, 7, 4) STEP(F, d, a, b, c, 5, 12, 5)      \
    STEP(F, c, d, a, b, 6, 17, 6) STEP(F, b, c, d, a, 7, 22, 7) STEP(F, a, b, c, d, 8, 7, 8)      \
    STEP(F, d, a, b, c, 9, 12, 9) STEP(F, c, d, a, b, 10, 17, 10) STEP(F, b, c, d, a, 11, 22, 11) \
    STEP(F, a, b, c, d, 12, 7, 12) STEP(F, d, a, b, c, 13, 12, 13)                              \
    STEP(F, c, d, a, b, 14, 17, 14) STEP(F, b, c, d, a, 15, 22, 15)                             \
    STEP(G, a, b, c, d, 1, 5, 16) STEP(G, d, a, b, c, 6, 9, 17) STEP(G, c, d, a, b, 11, 14, 18)   \
    STEP(G, b, c, d, a, 0, 20, 19) STEP(G, a, b, c, d, 5, 5, 20) STEP(G, d, a, b, c, 10, 9, 21)   \
    STEP(G, c, d, a, b, 15, 14, 22) STEP(G, b, c, d, a, 4, 20, 23) STEP(G, a, b, c, d, 9, 5, 24)  \
    STEP(G, d, a, b, c, 14, 9, 25) STEP(G, c, d, a, b, 3, 14, 26) STEP(G, b, c, d, a, 8, 20, 27)  \
    STEP(G, a, b, c, d, 13, 5, 28) STEP(G, d, a, b, c, 2, 9, 29) STEP(G, c, d, a, b, 7, 14, 30)   \
    STEP(G, b, c, d, a, 12, 20, 31)                                                             \
    STEP(H, a, b, c, d, 5, 4, 32) STEP(H, d, a, b, c, 8, 11, 33) STEP(H, c, d, a, b, 11, 16, 34)  \
    STEP(H, b, c, d, a, 14, 23, 35) STEP(H, a, b, c, d, 1, 4, 36) STEP(H, d, a, b, c, 4, 11, 37)  \
    STEP(H, c, d, a, b, 7, 16, 38) STEP(H, b, c, d, a, 10, 23, 39) STEP(H, a, b, c, d, 13, 4, 40) \
    STEP(H, d, a, b, c, 0, 11, 41) STEP(H, c, d, a, b, 3, 16, 42) STEP(H, b, c, d, a, 6, 23, 43)  \
    STEP(H, a, b, c, d, 9, 4, 44) STEP(H, d, a, b, c, 12, 11, 45) STEP(H, c, d, a, b, 15, 16, 46) \
    STEP(H, b, c, d, a, 2, 23, 47)                                                              \
    STEP(I, a, b, c, d, 0, 6, 48) STEP(I, d, a, b, c, 7, 10, 49) STEP(I, c, d, a, b, 14, 15, 50)  \
    STEP(I, b, c, d, a, 5, 21, 51) STEP(I, a, b, c, d, 12, 6, 52) STEP(I, d, a, b, c, 3, 10, 53)  \
    STEP(I, c, d, a, b, 10, 15, 54) STEP(I, b, c, d, a, 1, 21, 55) STEP(I, a, b, c, d, 8, 6, 56)  \
    STEP(I, d, a, b, c, 15, 10, 57) STEP(I, c, d, a, b, 6, 15, 58) STEP(I, b, c, d, a, 13, 21, 59) \
    STEP(I, a, b, c, d, 4, 6, 60) STEP(I, d, a, b, c, 11, 10, 61) STEP(I, c, d, a, b, 2, 15, 62)  \
    STEP(I, b, c, d, a, 9, 21, 63)

static inline uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

/* ---- one stream, portable C ---- */

#define S_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define S_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define S_H(x, y, z) ((x) ^ (y) ^ (z))
#define S_I(x, y, z) ((y) ^ ((x) | ~(z)))
#define S_ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define S_STEP(f, a, b, c, d, k, s, i) a = b + S_ROTL(a + S_##f(b, c, d) + X[k] + T[i], s);

static void md5_x1(unsigned char *state, const unsigned char *p, size_t nblocks) {
    uint32_t a0 = load_le32(state), b0 = load_le32(state + 4);
    uint32_t c0 = load_le32(state + 8), d0 = load_le32(state + 12);
    uint32_t X[16];
    for (size_t n = 0; n < nblocks; n++, p += 64) {
        for (int k = 0; k < 16; k++) X[k] = load_le32(p + 4 * k);
        uint32_t a = a0, b = b0, c = c0, d = d0;
        MD5L_ROUNDS(S_STEP)
        a0 += a; b0 += b; c0 += c; d0 += d;
    }
    store_le32(state, a0); store_le32(state + 4, b0);
    store_le32(state + 8, c0); store_le32(state + 12, d0);
}

#ifdef MD5L_X86
/* ---- 8 streams, AVX2 ---- */

#define V8_F(x, y, z) _mm256_xor_si256(z, _mm256_and_si256(x, _mm256_xor_si256(y, z)))
#define V8_G(x, y, z) _mm256_xor_si256(y, _mm256_and_si256(z, _mm256_xor_si256(x, y)))
#define V8_H(x, y, z) _mm256_xor_si256(_mm256_xor_si256(x, y), z)
#define V8_I(x, y, z) _mm256_xor_si256(y, _mm256_or_si256(x, _mm256_xor_si256(z, ones)))
#define V8_ROTL(x, s) _mm256_or_si256(_mm256_slli_epi32(x, s), _mm256_srli_epi32(x, 32 - (s)))
#define V8_STEP(f, a, b, c, d, k, s, i)                                                         \
    a = _mm256_add_epi32(b, V8_ROTL(_mm256_add_epi32(_mm256_add_epi32(a, V8_##f(b, c, d)),     \
                                                     _mm256_add_epi32(X[k], _mm256_set1_epi32( \
                                                         (int)T[i]))), s));

#define MD5L_X8_BODY(STEP) \
    const __m256i ones = _mm256_set1_epi32(-1); (void)ones; \
    __m256i a0 = _mm256_loadu_si256((const __m256i *)st[0]); \
    __m256i b0 = _mm256_loadu_si256((const __m256i *)st[1]); \
    __m256i c0 = _mm256_loadu_si256((const __m256i *)st[2]); \
    __m256i d0 = _mm256_loadu_si256((const __m256i *)st[3]); \
    const unsigned char *p[8]; \
    for (int l = 0; l < 8; l++) p[l] = ptr[l]; \
    __m256i X[16]; \
    for (size_t n = 0; n < nblocks; n++) { \
        /* transpose: row l is lane l's block (two 32-byte halves); X[k] gathers word k */ \
        for (int h = 0; h < 2; h++) { \
            __m256i r[8], t[8], u[8]; \
            for (int l = 0; l < 8; l++) r[l] = _mm256_loadu_si256((const __m256i *)(p[l] + 32 * h)); \
            for (int l = 0; l < 8; l += 2) { \
                t[l] = _mm256_unpacklo_epi32(r[l], r[l + 1]); \
                t[l + 1] = _mm256_unpackhi_epi32(r[l], r[l + 1]); \
            } \
            for (int l = 0; l < 8; l += 4) { \
                u[l] = _mm256_unpacklo_epi64(t[l], t[l + 2]); \
                u[l + 1] = _mm256_unpackhi_epi64(t[l], t[l + 2]); \
                u[l + 2] = _mm256_unpacklo_epi64(t[l + 1], t[l + 3]); \
                u[l + 3] = _mm256_unpackhi_epi64(t[l + 1], t[l + 3]); \
            } \
            /* u[0..3]: words 0,1,2,3 (and 4..7 in the high half) of lanes 0-3; u[4..7]: lanes 4-7 */ \
            for (int w = 0; w < 4; w++) { \
                X[8 * h + w] = _mm256_permute2x128_si256(u[w], u[4 + w], 0x20); \
                X[8 * h + 4 + w] = _mm256_permute2x128_si256(u[w], u[4 + w], 0x31); \
            } \
        } \
        __m256i a = a0, b = b0, c = c0, d = d0; \
        MD5L_ROUNDS(STEP) \
        a0 = _mm256_add_epi32(a0, a); b0 = _mm256_add_epi32(b0, b); \
        c0 = _mm256_add_epi32(c0, c); d0 = _mm256_add_epi32(d0, d); \
        for (int l = 0; l < 8; l++) p[l] += step[l]; \
    } \
    _mm256_storeu_si256((__m256i *)st[0], a0); _mm256_storeu_si256((__m256i *)st[1], b0); \
    _mm256_storeu_si256((__m256i *)st[2], c0); _mm256_storeu_si256((__m256i *)st[3], d0);

__attribute__((target("avx2"))) static void md5_x8(uint32_t st[4][8],
                                                     const unsigned char *const ptr[8],
                                                     const size_t step[8], size_t nblocks) {
    MD5L_X8_BODY(V8_STEP)
}

/* ---- 8 streams, AVX-512VL: the AVX2 kernel with native rotates and three-input logic ---- */

#define V8VL_F(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0xCA)
#define V8VL_G(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0xE4)
#define V8VL_H(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0x96)
#define V8VL_I(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0x39)
#define V8VL_STEP(f, a, b, c, d, k, s, i)                                                       \
    a = _mm256_add_epi32(b, _mm256_rol_epi32(_mm256_add_epi32(                                 \
        _mm256_add_epi32(a, V8VL_##f(b, c, d)), _mm256_add_epi32(X[k], _mm256_set1_epi32(     \
            (int)T[i]))), s));

__attribute__((target("avx2,avx512f,avx512vl"))) static void md5_x8vl(
    uint32_t st[4][8], const unsigned char *const ptr[8], const size_t step[8], size_t nblocks) {
    MD5L_X8_BODY(V8VL_STEP)
}

/* ---- 16 streams, AVX-512 ---- */

#define V16_F(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0xCA)
#define V16_G(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0xE4)
#define V16_H(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0x96)
#define V16_I(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0x39)
#define V16_STEP(f, a, b, c, d, k, s, i)                                                        \
    a = _mm512_add_epi32(b, _mm512_rol_epi32(_mm512_add_epi32(                                  \
        _mm512_add_epi32(a, V16_##f(b, c, d)), _mm512_add_epi32(X[k], _mm512_set1_epi32(       \
            (int)T[i]))), s));

__attribute__((target("avx512f"))) static void md5_x16(uint32_t st[4][16],
                                                         const unsigned char *const ptr[16],
                                                         const size_t step[16], size_t nblocks) {
    __m512i a0 = _mm512_loadu_si512(st[0]), b0 = _mm512_loadu_si512(st[1]);
    __m512i c0 = _mm512_loadu_si512(st[2]), d0 = _mm512_loadu_si512(st[3]);
    const unsigned char *p[16];
    for (int l = 0; l < 16; l++) p[l] = ptr[l];
    __m512i X[16];
    for (size_t n = 0; n < nblocks; n++) {
        /* 16x16 transpose of 32-bit words: row l is lane l's block, X[k] gathers word k */
        __m512i r[16], t[16], u[16];
        for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_si512(p[l]);
        for (int l = 0; l < 16; l += 2) {
            t[l] = _mm512_unpacklo_epi32(r[l], r[l + 1]);
            t[l + 1] = _mm512_unpackhi_epi32(r[l], r[l + 1]);
        }
        for (int l = 0; l < 16; l += 4) {
            u[l] = _mm512_unpacklo_epi64(t[l], t[l + 2]);
            u[l + 1] = _mm512_unpackhi_epi64(t[l], t[l + 2]);
            u[l + 2] = _mm512_unpacklo_epi64(t[l + 1], t[l + 3]);
            u[l + 3] = _mm512_unpackhi_epi64(t[l + 1], t[l + 3]);
        }
        /* 128-bit part q of u[4j + w] holds word 4q + w of lanes 4j..4j+3 */
        for (int w = 0; w < 4; w++) {
            __m512i v0 = _mm512_shuffle_i32x4(u[w], u[4 + w], 0x44);
            __m512i v1 = _mm512_shuffle_i32x4(u[w], u[4 + w], 0xEE);
            __m512i v2 = _mm512_shuffle_i32x4(u[8 + w], u[12 + w], 0x44);
            __m512i v3 = _mm512_shuffle_i32x4(u[8 + w], u[12 + w], 0xEE);
            X[w] = _mm512_shuffle_i32x4(v0, v2, 0x88);
            X[4 + w] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
            X[8 + w] = _mm512_shuffle_i32x4(v1, v3, 0x88);
            X[12 + w] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
        }
        __m512i a = a0, b = b0, c = c0, d = d0;
        MD5L_ROUNDS(V16_STEP)
        a0 = _mm512_add_epi32(a0, a); b0 = _mm512_add_epi32(b0, b);
        c0 = _mm512_add_epi32(c0, c); d0 = _mm512_add_epi32(d0, d);
        for (int l = 0; l < 16; l++) p[l] += step[l];
    }
    _mm512_storeu_si512(st[0], a0); _mm512_storeu_si512(st[1], b0);
    _mm512_storeu_si512(st[2], c0); _mm512_storeu_si512(st[3], d0);
}
#endif

/* ---- the scheduler: streams into lanes ---- */

typedef struct {
    unsigned char *state;
    const unsigned char *data;
    size_t blocks; /* left */
} job_t;

static const unsigned char idle_block[64]; /* what an empty lane hashes, into a discarded state */

enum { K_C, K_AVX2, K_AVX512VL, K_AVX512, K_COUNT };
static const char *const kernel_names[K_COUNT] = {"c", "avx2", "avx512vl", "avx512"};
static const int kernel_lanes[K_COUNT] = {1, 8, 8, 16};

static void run_lanes(job_t *jobs, Py_ssize_t n, int kernel) {
    const int width = kernel_lanes[kernel];
    int lane_job[16];
    Py_ssize_t next = 0;
    int active = 0;
    for (int l = 0; l < 16; l++) lane_job[l] = -1;
    for (;;) {
        /* fill empty lanes with streams that still have blocks */
        for (int l = 0; l < width; l++) {
            while (lane_job[l] < 0 && next < n) {
                if (jobs[next].blocks) { lane_job[l] = (int)next; active++; }
                next++;
            }
        }
        if (active == 0) return;
        if (active == 1 || width == 1) {
            for (int l = 0; l < width; l++) {
                if (lane_job[l] >= 0) {
                    job_t *j = &jobs[lane_job[l]];
                    md5_x1(j->state, j->data, j->blocks);
                    j->data += 64 * j->blocks; j->blocks = 0;
                    lane_job[l] = -1; active--;
                }
            }
            continue;
        }
#ifdef MD5L_X86
        uint32_t st[4][16];
        const unsigned char *ptr[16];
        size_t step[16];
        size_t m = SIZE_MAX;
        for (int l = 0; l < width; l++) {
            if (lane_job[l] >= 0) {
                job_t *j = &jobs[lane_job[l]];
                if (j->blocks < m) m = j->blocks;
                for (int w = 0; w < 4; w++) st[w][l] = load_le32(j->state + 4 * w);
                ptr[l] = j->data; step[l] = 64;
            } else {
                for (int w = 0; w < 4; w++) st[w][l] = 0;
                ptr[l] = idle_block; step[l] = 0;
            }
        }
        if (kernel == K_AVX512) {
            md5_x16(st, ptr, step, m);
        } else {
            uint32_t s8[4][8];
            for (int w = 0; w < 4; w++) memcpy(s8[w], st[w], sizeof s8[w]);
            if (kernel == K_AVX512VL) md5_x8vl(s8, ptr, step, m);
            else md5_x8(s8, ptr, step, m);
            for (int w = 0; w < 4; w++) memcpy(st[w], s8[w], sizeof s8[w]);
        }
        for (int l = 0; l < width; l++) {
            if (lane_job[l] < 0) continue;
            job_t *j = &jobs[lane_job[l]];
            for (int w = 0; w < 4; w++) store_le32(j->state + 4 * w, st[w][l]);
            j->data += 64 * m; j->blocks -= m;
            if (j->blocks == 0) { lane_job[l] = -1; active--; }
        }
#endif
    }
}

static int supported(int kernel) {
#ifdef MD5L_X86
    __builtin_cpu_init();
    switch (kernel) {
    case K_AVX2: return __builtin_cpu_supports("avx2");
    case K_AVX512VL:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl");
    case K_AVX512: return __builtin_cpu_supports("avx512f");
    default: break;
    }
#endif
    return kernel == K_C;
}

/* the default: measured on AMD EPYC (Zen 4) and Intel Xeon VMs, 2 MiB bodies, 8 and 16 streams
 * (docs/ARCHITECTURE.md "MD5 ETags in SIMD lanes") */
static const int preference[K_COUNT] = {K_AVX512VL, K_AVX512, K_AVX2, K_C};

static int best_kernel(void) {
    for (int i = 0; i < K_COUNT; i++)
        if (supported(preference[i])) return preference[i];
    return K_C;
}

static int kernel_by_name(const char *name) {
    if (name == NULL || name[0] == 0) return best_kernel();
    for (int k = 0; k < K_COUNT; k++)
        if (strcmp(name, kernel_names[k]) == 0) return k;
    return -1;
}

static PyObject *md5l_compress(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"states", "datas", "kernel", NULL};
    PyObject *states, *datas;
    const char *name = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|s", names, &states, &datas, &name)) return NULL;
    int kernel = kernel_by_name(name);
    if (kernel < 0 || !supported(kernel)) {
        PyErr_Format(PyExc_ValueError, "kernel %s is unknown or not run by this CPU", name);
        return NULL;
    }
    PyObject *sf = PySequence_Fast(states, "states must be a sequence");
    if (sf == NULL) return NULL;
    PyObject *df = PySequence_Fast(datas, "datas must be a sequence");
    if (df == NULL) { Py_DECREF(sf); return NULL; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sf);
    PyObject *ret = NULL;
    Py_buffer sb[STREAMS_MAX], db[STREAMS_MAX];
    job_t jobs[STREAMS_MAX];
    Py_ssize_t got = 0;
    if (n != PySequence_Fast_GET_SIZE(df)) {
        PyErr_SetString(PyExc_ValueError, "states and datas differ in length");
        goto done;
    }
    if (n > STREAMS_MAX) {
        PyErr_Format(PyExc_ValueError, "at most %d streams per call", STREAMS_MAX);
        goto done;
    }
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(sf, got), &sb[got],
                               PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(df, got), &db[got], PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&sb[got]);
            goto done;
        }
        if (sb[got].len != 16 || db[got].len % 64 != 0) {
            PyErr_SetString(PyExc_ValueError, "a state is 16 bytes and data a multiple of 64");
            PyBuffer_Release(&sb[got]); PyBuffer_Release(&db[got]);
            goto done;
        }
        jobs[got].state = sb[got].buf;
        jobs[got].data = db[got].buf;
        jobs[got].blocks = (size_t)db[got].len / 64;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t k = i + 1; k < n; k++)
            if (jobs[i].state == jobs[k].state) {
                PyErr_SetString(PyExc_ValueError, "a state appears twice");
                goto done;
            }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) total += jobs[i].blocks;
    if (total * 64 < GIL_RELEASE_BYTES_MIN) {
        run_lanes(jobs, n, kernel); /* a tail or a padding block: cheaper than a GIL hand-off */
    } else {
        Py_BEGIN_ALLOW_THREADS
        run_lanes(jobs, n, kernel);
        Py_END_ALLOW_THREADS
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    for (Py_ssize_t i = 0; i < got; i++) { PyBuffer_Release(&sb[i]); PyBuffer_Release(&db[i]); }
    Py_DECREF(sf);
    Py_DECREF(df);
    return ret;
}

static PyObject *md5l_kernels(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (int i = 0; i < K_COUNT; i++) {
        if (!supported(preference[i])) continue;
        PyObject *t = Py_BuildValue("(si)", kernel_names[preference[i]], kernel_lanes[preference[i]]);
        if (t == NULL || PyList_Append(out, t) < 0) { Py_XDECREF(t); Py_DECREF(out); return NULL; }
        Py_DECREF(t);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"compress", (PyCFunction)(void (*)(void))md5l_compress, METH_VARARGS | METH_KEYWORDS,
     "compress(states, datas, width=0): run MD5's compression over whole 64-byte blocks of each "
     "stream, one SIMD lane per stream; the GIL is released meanwhile."},
    {"kernels", md5l_kernels, METH_NOARGS,
     "kernels(): [(name, lanes)] this CPU runs, the default (what kernel='' picks) first."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kvstore_md5lanes",
                                    "MD5 of many streams at once, one SIMD lane per stream.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_kvstore_md5lanes(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "STREAMS_MAX", STREAMS_MAX) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
