/* The LSTM's time loop for the CPU, forward and backward, in C (flaxlstm/native.py calls it
 * through XLA's FFI, flaxlstm/_lstm_cpu_ffi.cc).
 *
 * XLA:CPU pays a fixed cost for every operation of a loop's body, every step; at the sizes of
 * the seeds' models that cost, not arithmetic, is most of a step (docs/PERFORMANCE.md). Here
 * one call runs all T steps. The batch rows are independent, so the rows are cut into one part
 * per CPU this process may run on, and each part goes through every step on one thread with
 * no synchronisation between steps: the calling thread and helpers on XLA's own thread pool
 * (in_parts; no thread is left spinning between calls). A step computes only the rows of
 * its part that are real at that step (rows_to_compute: a batch cut to a bucket's width still
 * pads its shorter reviews). Each step's products are register-tiled (8 rows x 32 columns of
 * accumulators); everything else of a step is one pass over [rows, H]. Arrays are float32,
 * time-major, C-contiguous.
 *
 * Gates are laid out [i, f, g, o] along the last axis of size 4H, as flaxlstm/cell.py has them:
 *   z = x_t.W + b + h.U,  i, f, o = sigma(z_i, z_f, z_o),  g = tanh(z_g)
 *   c = f * c_prev + i * g,  h = o * tanh(c)
 * A padded step (mask 0) keeps the state and outputs 0, as recurrent.keep_state_where_padded.
 * A recurrent dropout mask r [B, H] (variational: the same at every step) multiplies h where
 * it enters the product: z = x_t.W + b + (h * r).U.
 *
 * With bf16 set (built only where the compiler targets AVX512-BF16: lstm_has_bf16()), every
 * product takes bfloat16 operands, rounded to nearest even, and accumulates in float32
 * (vdpbf16ps: two products per 32-bit lane), as lstm_scan's matmul_dtype=bfloat16 does: the
 * bias is rounded too, everything else (gates, states, sums) stays float32. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, v16 v) { memcpy(p, &v, sizeof v); }

/* The products' register tiles, for float32 (In float, each k one multiply-add) and for
 * bfloat16 pairs (In pair, below: each k two, vdpbf16ps). One tile of out = base + in.m: R rows
 * x 16Q columns from column c, the accumulators held in registers over the whole k loop, m's
 * rows loaded once for all R rows. Strides in In; m's is n. out may be base. */
#define TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, R, Q)                                         \
    static void NAME##_##R##x##Q(int k, int n, int c, const In *in, int in_stride, const In *m,  \
                                 const float *base, int base_stride, float *out, int out_stride) { \
        v16 acc[R][Q];                                                                           \
        for (int r = 0; r < R; r++)                                                              \
            for (int q = 0; q < Q; q++) acc[r][q] = load(base + r * base_stride + c + 16 * q);   \
        for (int i = 0; i < k; i++) {                                                            \
            Mv mi[Q];                                                                            \
            for (int q = 0; q < Q; q++) mi[q] = LOAD_M(m + (size_t)i * n + c + 16 * q);          \
            for (int r = 0; r < R; r++) {                                                        \
                Mv a = BROADCAST(in[r * in_stride + i]);                                         \
                for (int q = 0; q < Q; q++) acc[r][q] = MADD(acc[r][q], a, mi[q]);               \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int q = 0; q < Q; q++) store(out + r * out_stride + c + 16 * q, acc[r][q]);     \
    }

/* NAME(rows, k, n, in, ...): out[r, :n] = base[r, :n] + in[r, :k].m[:k, :n] for every row
 * r < rows (n a multiple of 16; base_stride 0 adds the same row to every row), with NAME's
 * tiles of 8, 4 and 1 rows. Column panels outside, rows inside: a panel of m (k x 32) stays
 * in cache while every row block reads it. */
#define GEMM(NAME, In)                                                                           \
    static void NAME(int rows, int k, int n, const In *in, int in_stride, const In *m,           \
                     const float *base, int base_stride, float *out, int out_stride) {           \
        for (int c = 0, q; c < n; c += 16 * q) {                                                 \
            q = c + 32 <= n ? 2 : 1;                                                             \
            for (int r = 0; r < rows;) {                                                         \
                const In *ir = in + r * in_stride;                                               \
                const float *br = base + r * base_stride;                                        \
                float *outr = out + r * out_stride;                                              \
                int R = r + 8 <= rows ? 8 : r + 4 <= rows ? 4 : 1;                              \
                (q == 2 ? R == 8 ? NAME##_8x2 : R == 4 ? NAME##_4x2 : NAME##_1x2                 \
                        : R == 8 ? NAME##_8x1 : R == 4 ? NAME##_4x1 : NAME##_1x1)(               \
                    k, n, c, ir, in_stride, m, br, base_stride, outr, out_stride);               \
                r += R;                                                                          \
            }                                                                                    \
        }                                                                                        \
    }
#define TILES(NAME, In, Mv, LOAD_M, BROADCAST, MADD)                                             \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 8, 2)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 4, 2)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 1, 2)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 8, 1)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 4, 1)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 1, 1)                                            \
    GEMM(NAME, In)

/* float32: a scalar of in, broadcast, times a row of m (gcc's vector extension: AVX-512 or not). */
#define SPLAT(x) ((v16){} + (x))
#define FMA32(acc, a, mi) ((acc) + (a) * (mi))
TILES(gemm, float, v16, load, SPLAT, FMA32)

/* Products on bfloat16 pairs: a `pair` holds two bfloat16 (the first in the low half), the
 * operands of one vdpbf16ps lane. pack_rows turns in [rows, k] into pairs along k,
 * [rows, (k + 1) / 2]; pack_cols turns m [k, n] into pairs down its columns, [(k + 1) / 2, n];
 * an odd k's missing half is 0. */
typedef uint32_t pair;

static inline uint32_t bf16_bits(float f) { /* round to nearest even (finite f) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
static inline float bf16_round(float f) {
    uint32_t u = bf16_bits(f) << 16;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline pair pair_of(float first, float second) {
    return bf16_bits(first) | bf16_bits(second) << 16;
}

static void pack_rows(int rows, int k, const float *in, int in_stride, pair *out) {
    int k2 = (k + 1) / 2;
    for (int r = 0; r < rows; r++) {
        const float *ir = in + (size_t)r * in_stride;
        pair *outr = out + (size_t)r * k2;
        for (int i = 0; i < k / 2; i++) outr[i] = pair_of(ir[2 * i], ir[2 * i + 1]);
        if (k % 2) outr[k2 - 1] = pair_of(ir[k - 1], 0.0f);
    }
}

static void pack_cols(int k, int n, const float *m, int m_stride, pair *out) {
    for (int i = 0; i < k / 2; i++) {
        const float *a = m + (size_t)2 * i * m_stride, *b = a + m_stride;
        for (int j = 0; j < n; j++) out[(size_t)i * n + j] = pair_of(a[j], b[j]);
    }
    const float *last = m + (size_t)(k - 1) * m_stride; /* an odd k's last row, alone */
    if (k % 2)
        for (int j = 0; j < n; j++) out[(size_t)(k / 2) * n + j] = pair_of(last[j], 0.0f);
}

#ifdef __AVX512BF16__
#include <immintrin.h>
int lstm_has_bf16(void) { return 1; }

/* bfloat16: k pairs of in's row against k rows of pairs of m, two products per lane. */
#define LOAD_PAIRS(p) ((__m512bh)_mm512_loadu_si512(p))
#define BROADCAST_PAIR(x) ((__m512bh)_mm512_set1_epi32((int)(x)))
#define DOT_BF16(acc, a, mi) _mm512_dpbf16_ps(acc, a, mi)
TILES(gemm_bf16, pair, __m512bh, LOAD_PAIRS, BROADCAST_PAIR, DOT_BF16)
#else
int lstm_has_bf16(void) { return 0; }
static void gemm_bf16(int rows, int k2, int n, const pair *in, int in_stride, const pair *m,
                      const float *base, int base_stride, float *out, int out_stride) {
    (void)rows, (void)k2, (void)n, (void)in, (void)in_stride, (void)m, (void)base;
    (void)base_stride, (void)out, (void)out_stride;
    abort(); /* never called: native.py asks lstm_has_bf16() first */
}
#endif

/* out = base + in.m for in [rows, k] (float32, rounded to pairs into the scratch in2 when m
 * is pairs) and m [k, n]: float32, or pairs [(k + 1) / 2, n] when bf16. */
static void product(int bf16, int rows, int k, int n, const float *in, int in_stride,
                    pair *in2, const void *m, const float *base, int base_stride, float *out,
                    int out_stride) {
    if (!bf16) {
        gemm(rows, k, n, in, in_stride, m, base, base_stride, out, out_stride);
        return;
    }
    pack_rows(rows, k, in, in_stride, in2);
    gemm_bf16(rows, (k + 1) / 2, n, in2, (k + 1) / 2, m, base, base_stride, out, out_stride);
}

/* Runs work(context, part, lo, hi) on parts of the rows [0, B) and returns when all are done.
 * Helpers are started with spawn(pool, task, arg) (XLA's own thread pool, handed to the FFI
 * handler: its idle threads take them at once, where a new thread would have to share a CPU
 * with them), or on new threads when spawn is NULL. The caller and its helpers each take the
 * next part not yet taken until none is left, so the parts are done even if no helper ever
 * starts (a pool whose every thread is busy); the last holder of the shared state frees it. */
typedef void (*Work)(const void *context, int part, int lo, int hi);
typedef void (*Spawn)(void *pool, void (*task)(void *), void *arg);
typedef struct {
    Work work;
    const void *context;
    int B, parts;
    atomic_int next, done, holders; /* parts taken, parts done, who may still read this */
} Parts;

static void take_parts(Parts *ps) {
    for (int p; (p = atomic_fetch_add(&ps->next, 1)) < ps->parts; atomic_fetch_add(&ps->done, 1))
        ps->work(ps->context, p, ps->B * p / ps->parts, ps->B * (p + 1) / ps->parts);
}

static void let_go(Parts *ps) {
    if (atomic_fetch_sub(&ps->holders, 1) == 1) free(ps);
}

static void helper(void *ps) {
    take_parts(ps);
    let_go(ps);
}

typedef struct {
    void (*task)(void *);
    void *arg;
} Task;

static void *run_task(void *task) {
    Task t = *(Task *)task;
    free(task);
    t.task(t.arg);
    return NULL;
}

/* A Spawn without a pool: task(arg) on a new thread (or here, if none can be had). */
static void spawn_thread(void *pool, void (*task)(void *), void *arg) {
    pthread_t thread;
    pthread_attr_t attr;
    Task *t = malloc(sizeof *t);
    (void)pool;
    *t = (Task){task, arg};
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attr, run_task, t) != 0) run_task(t);
    pthread_attr_destroy(&attr);
}

enum { MAX_PARTS = 64 };

/* One part per CPU this process may run on (its affinity), at most B. */
static int parts_for(int B) {
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    int parts = cpus < B ? cpus : B;
    return parts < 1 ? 1 : parts > MAX_PARTS ? MAX_PARTS : parts;
}

static void in_parts(Work work, const void *context, int B, int parts, Spawn spawn, void *pool) {
    Parts *ps = malloc(sizeof *ps);
    ps->work = work, ps->context = context, ps->B = B, ps->parts = parts;
    atomic_init(&ps->next, 0), atomic_init(&ps->done, 0), atomic_init(&ps->holders, parts);
    for (int p = 1; p < parts; p++) (spawn ? spawn : spawn_thread)(pool, helper, ps);
    take_parts(ps);
    while (atomic_load(&ps->done) < parts) sched_yield(); /* a helper finishing its part */
    let_go(ps);
}

/* Asks the kernel for 2 MiB pages under the whole 2 MiB pages inside [p, p + bytes): XLA hands
 * the loop large output buffers in freshly mapped memory, and touching it 4 KiB page by page
 * costs more than writing it (docs/PERFORMANCE.md). Only a hint: nothing changes if refused. */
static void huge_pages(void *p, size_t bytes) {
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t hi = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

/* tanh of n floats, n a multiple of 16 (glibc's vector tanhf, 16 lanes at a time: a loop to
 * H = 100 would leave 4 lanes to the scalar tanhf, which costs as much as the other 96). */
static void tanh_all(int n, const float *in, float *out) {
#pragma omp simd
    for (int j = 0; j < n; j++) out[j] = tanhf(in[j]);
}

/* A row of 4H's four gate slices, i, f, g, o: one pointer each, so that the compiler reads
 * each slice with plain vector loads (j + H indexing made gcc gather element by element). */
typedef struct {
    float *i, *f, *g, *o;
} Gates;
static inline Gates gates(const float *row, int H) {
    float *r = (float *)row;
    return (Gates){r, r + H, r + 2 * H, r + 3 * H};
}

/* The step's cell state c = f c_prev + i g [H] and tanh(c) [Hp] (c's padding stays 0), from
 * the activated gates a: the forward's, and the backward's recomputed. */
static inline void cell_state(Gates a, const float *c_prev, int H, int Hp, float *c, float *tc) {
#pragma omp simd
    for (int j = 0; j < H; j++) c[j] = a.f[j] * c_prev[j] + a.i[j] * a.g[j];
    tanh_all(Hp, c, tc);
}

/* The rows of a part to compute at one step, from their mask [rows] (NULL: all real): the
 * real rows in order, then padded ones up to a multiple of 4 rows (the products' tiles; their
 * results are dropped), then the rest, skipped. order [rows] receives them all; returns how
 * many are computed. The forward and the backward make the same choice from the same mask, so
 * the backward reads only what the forward wrote. */
static int rows_to_compute(const float *mask, int rows, int *order) {
    int n = 0;
    for (int r = 0; r < rows; r++)
        if (!mask || mask[r] != 0.0f) order[n++] = r;
    int computed = (n + 3) / 4 * 4;
    for (int r = 0; r < rows && mask; r++)
        if (mask[r] == 0.0f) order[n++] = r;
    return computed < rows ? computed : rows;
}

typedef struct {
    int T, B, H, F, reverse, save, bf16;
    const float *x, *mask, *rmask, *base; /* base = bias, 4H padded to Gp */
    const float *scale; /* [Gp]: 1 in g's columns, 1/2 elsewhere (forward_rows) */
    const void *wu;                       /* [w; u] [K, Gp], or its pairs when bf16 */
    float *a, *c_prev, *h_prev, *out, *c_n, *h_n;
} Forward;

static void forward_rows(const void *context, int part, int lo, int hi) {
    const Forward *p = context;
    int T = p->T, B = p->B, H = p->H, F = p->F, G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H;
    int rows = hi - lo, Hp = (H + 15) / 16 * 16;
    float *z = calloc((size_t)rows * Gp, sizeof(float)), *xh = calloc((size_t)rows * K, sizeof(float));
    float *c = calloc((size_t)Hp, sizeof(float)), *tc = calloc((size_t)Hp, sizeof(float));
    pair *xh2 = p->bf16 ? calloc((size_t)rows * ((K + 1) / 2), sizeof(pair)) : NULL;
    int *order = malloc((size_t)rows * sizeof(int));
    float *c_n = p->c_n + (size_t)lo * H, *h_n = p->h_n + (size_t)lo * H; /* the carried state */
    (void)part;
    for (int s = 0; s < T; s++) {
        size_t row = (size_t)(p->reverse ? T - 1 - s : s) * B + lo;
        int n = rows_to_compute(p->mask ? p->mask + row : NULL, rows, order);
        if (p->save) {
            memcpy(p->c_prev + row * H, c_n, (size_t)rows * H * sizeof(float));
            memcpy(p->h_prev + row * H, h_n, (size_t)rows * H * sizeof(float));
        }
        for (int q = 0; q < n; q++) { /* [x_t, h r], row q of the computed ones */
            int r = order[q];
            const float *rm = p->rmask ? p->rmask + (size_t)(lo + r) * H : NULL;
            memcpy(xh + (size_t)q * K, p->x + (row + r) * F, F * sizeof(float));
            for (int j = 0; j < H; j++)
                xh[(size_t)q * K + F + j] = h_n[(size_t)r * H + j] * (rm ? rm[j] : 1.0f);
        }
        /* z = [x_t, h r].[w; u] + bias */
        product(p->bf16, n, K, Gp, xh, K, xh2, p->wu, p->base, 0, z, Gp);
        for (int q = 0; q < n; q++) {
            int r = order[q];
            float m = p->mask ? p->mask[row + r] : 1.0f;
            float *zr = z + (size_t)q * Gp, *cr = c_n + (size_t)r * H, *hr = h_n + (size_t)r * H;
            float *outr = p->out ? p->out + (row + r) * H : NULL;
            /* the gates in place, the whole padded row in one pass: σ(z) = tanh(z/2)/2 + 1/2,
             * so a = s tanh(s z) + 1 - s with s = 1/2 for i, f, o and s = 1 for g */
#pragma omp simd
            for (int j = 0; j < Gp; j++) {
                float s = p->scale[j];
                zr[j] = s * tanhf(s * zr[j]) + 1 - s;
            }
            Gates a = gates(zr, H);
            cell_state(a, cr, H, Hp, c, tc);
#pragma omp simd
            for (int j = 0; j < H; j++) {
                float h = a.o[j] * tc[j];
                cr[j] = m != 0.0f ? c[j] : cr[j];
                hr[j] = m != 0.0f ? h : hr[j];
            }
            if (outr) /* h where real, 0 where padded */
                for (int j = 0; j < H; j++) outr[j] = m != 0.0f ? hr[j] : 0.0f;
            if (p->save) memcpy(p->a + (row + r) * G, zr, G * sizeof(float));
        }
        for (int q = n; q < rows && p->out; q++) /* skipped: padded, output 0 */
            memset(p->out + (row + order[q]) * H, 0, H * sizeof(float));
    }
    free(z);
    free(xh);
    free(xh2);
    free(order);
    free(c);
    free(tc);
}

/* Forward over T steps of B rows (from the last step to the first when reverse; every array
 * stays in time order). x [T, B, F], w [F, 4H], u [H, 4H], bias [4H], c0, h0 [B, H], mask
 * [T, B] (1 real, 0 padded; NULL: all real), rmask [B, H] (NULL: none). Writes the outputs
 * out [T, B, H] (NULL: none), the final state c_n, h_n [B, H] and, when save (for the
 * backward), the activated gates a [T, B, 4H] and the state each step starts from, c_prev,
 * h_prev [T, B, H]. Each step's product is [x_t, h r].[w; u] + bias: one product, and no
 * [T, B, 4H] input projection in memory; bf16: on bfloat16 operands (see the top). The parts
 * run through spawn(pool, ...) (NULL: new threads; in_parts). */
void lstm_forward(Spawn spawn, void *pool, int T, int B, int H, int F, int reverse, int save,
                  int bf16, const float *x, const float *w, const float *u, const float *bias,
                  const float *c0, const float *h0, const float *mask, const float *rmask,
                  float *a, float *c_prev, float *h_prev, float *out, float *c_n, float *h_n) {
    int G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H;
    float *wu = calloc((size_t)K * Gp, sizeof(float)), *base = calloc((size_t)Gp, sizeof(float));
    for (int k = 0; k < K; k++)
        memcpy(wu + (size_t)k * Gp, k < F ? w + (size_t)k * G : u + (size_t)(k - F) * G,
               G * sizeof(float));
    float *scale = malloc((size_t)Gp * sizeof(float));
    for (int j = 0; j < Gp; j++) scale[j] = j >= 2 * H && j < 3 * H ? 1.0f : 0.5f;
    for (int j = 0; j < G; j++) base[j] = bf16 ? bf16_round(bias[j]) : bias[j];
    pair *wu2 = bf16 ? malloc((size_t)(K + 1) / 2 * Gp * sizeof(pair)) : NULL;
    if (bf16) pack_cols(K, Gp, wu, Gp, wu2);
    memcpy(c_n, c0, (size_t)B * H * sizeof(float));
    memcpy(h_n, h0, (size_t)B * H * sizeof(float));
    Forward context = {T, B, H, F, reverse, save, bf16, x, mask, rmask, base, scale,
                       bf16 ? (const void *)wu2 : wu, a, c_prev, h_prev, out, c_n, h_n};
    if (save) {
        huge_pages(a, (size_t)T * B * G * sizeof(float));
        huge_pages(c_prev, (size_t)T * B * H * sizeof(float));
        huge_pages(h_prev, (size_t)T * B * H * sizeof(float));
    }
    if (out) huge_pages(out, (size_t)T * B * H * sizeof(float));
    in_parts(forward_rows, &context, B, parts_for(B), spawn, pool);
    free(wu);
    free(wu2);
    free(base);
    free(scale);
}

typedef struct {
    int T, B, H, F, reverse, bf16;
    const float *a, *c_prev, *h_prev, *x, *d_out, *mask, *rmask;
    const void *wut; /* [w; u]^T [4H, Kp], or its pairs when bf16 */
    float *dx, *dh, *dc, *sums, *d_rmask; /* sums: each part's [dw; du; dbias] [K + 1, Gp] */
} Backward;

/* The backward adds [x_t, h_prev]^T.dz to the weight gradients' sums for this many steps at
 * once: one product over SUM_STEPS * rows instead of a pass over the sums every step. */
enum { SUM_STEPS = 8 };

static void backward_rows(const void *context, int part, int lo, int hi) {
    const Backward *p = context;
    int T = p->T, B = p->B, H = p->H, F = p->F, G = 4 * H, Gp = (G + 15) / 16 * 16;
    int K = F + H, Kp = (K + 15) / 16 * 16, rows = hi - lo, block = SUM_STEPS * rows;
    /* the last SUM_STEPS steps' dz [block, Gp] and [x_t, h_prev]^T [K, block] */
    float *dzs = calloc((size_t)block * Gp, sizeof(float)), *xht = calloc((size_t)K * block, sizeof(float));
    float *dxh = calloc((size_t)rows * Kp, sizeof(float));
    int Hp = (H + 15) / 16 * 16; /* c recomputed and its tanh, padded (tanh_all) */
    float *c = calloc((size_t)Hp, sizeof(float)), *tc = calloc((size_t)Hp, sizeof(float));
    /* bf16: the pairs of dz, of [x_t, h_prev]^T and of the last steps' dz */
    pair *dz2 = NULL, *xht2 = NULL, *dzs2 = NULL;
    if (p->bf16) {
        dz2 = calloc((size_t)rows * (G / 2), sizeof(pair));
        xht2 = calloc((size_t)K * ((block + 1) / 2), sizeof(pair));
        dzs2 = calloc((size_t)(block + 1) / 2 * Gp, sizeof(pair));
    }
    float *zero = calloc((size_t)Kp, sizeof(float)), *sum = p->sums + (size_t)part * (K + 1) * Gp;
    float *dbias = sum + (size_t)K * Gp; /* summed in float32 as dz comes */
    float *dh = p->dh + (size_t)lo * H, *dc = p->dc + (size_t)lo * H; /* carried */
    int *order = malloc((size_t)rows * sizeof(int)), filled = 0; /* dz's rows in dzs */
    for (int s = T - 1, done = 0; s >= 0; s--, done++) {
        size_t row = (size_t)(p->reverse ? T - 1 - s : s) * B + lo;
        int n = rows_to_compute(p->mask ? p->mask + row : NULL, rows, order);
        float *dz = dzs + (size_t)filled * Gp, *xht_s = xht + filled;
        for (int q = 0; q < n; q++) { /* skipped rows: dz 0, dh and dc pass unchanged */
            int r = order[q];
            float m = p->mask ? p->mask[row + r] : 1.0f;
            const float *cp = p->c_prev + (row + r) * H;
            const float *dout = p->d_out ? p->d_out + (row + r) * H : zero; /* none: 0 */
            float *dzr = dz + (size_t)q * Gp, *dhr = dh + (size_t)r * H, *dcr = dc + (size_t)r * H;
            Gates ag = gates(p->a + (row + r) * G, H), dzg = gates(dzr, H);
            cell_state(ag, cp, H, Hp, c, tc);
#pragma omp simd
            for (int j = 0; j < H; j++) {
                float i_ = ag.i[j], f_ = ag.f[j], g_ = ag.g[j], o_ = ag.o[j];
                int real = m != 0.0f;
                float d_h = dhr[j] + (real ? dout[j] : 0.0f);
                float d_c = dcr[j] + d_h * o_ * (1 - tc[j] * tc[j]);
                dzg.i[j] = real ? d_c * g_ * i_ * (1 - i_) : 0.0f;
                dzg.f[j] = real ? d_c * cp[j] * f_ * (1 - f_) : 0.0f;
                dzg.g[j] = real ? d_c * i_ * (1 - g_ * g_) : 0.0f;
                dzg.o[j] = real ? d_h * tc[j] * o_ * (1 - o_) : 0.0f;
                dcr[j] = real ? d_c * f_ : dcr[j];
                dhr[j] = d_h; /* what a padded step passes back */
            }
            for (int j = 0; j < G; j++) dbias[j] += dzr[j];
            for (int k = 0; k < F; k++) xht_s[(size_t)k * block + q] = p->x[(row + r) * F + k];
            const float *rm = p->rmask ? p->rmask + (size_t)(lo + r) * H : NULL;
            for (int k = 0; k < H; k++)
                xht_s[(size_t)(F + k) * block + q] =
                    p->h_prev[(row + r) * H + k] * (rm ? rm[k] : 1.0f);
        }
        /* [dx_t, dh_prev] = dz.[w; u]^T */
        product(p->bf16, n, G, Kp, dz, Gp, dz2, p->wut, zero, 0, dxh, Kp);
        filled += n;
        if (done % SUM_STEPS == SUM_STEPS - 1 || s == 0) { /* [dw; du] += the last steps' */
            if (p->bf16) pack_cols(filled, Gp, dzs, Gp, dzs2);
            const void *m = p->bf16 ? (const void *)dzs2 : dzs;
            product(p->bf16, K, filled, Gp, xht, block, xht2, m, sum, Gp, sum, Gp);
            filled = 0;
        }
        for (int q = 0; q < rows; q++) {
            int r = order[q];
            if (q >= n) { /* skipped: dx 0 */
                memset(p->dx + (row + r) * F, 0, F * sizeof(float));
                continue;
            }
            memcpy(p->dx + (row + r) * F, dxh + (size_t)q * Kp, F * sizeof(float));
            const float *dh_in = dxh + (size_t)q * Kp + F; /* the gradient of h r */
            const float *rm = p->rmask ? p->rmask + (size_t)(lo + r) * H : NULL;
            if (!p->mask || p->mask[row + r] != 0.0f) /* dh_prev = dh_in r */
                for (int j = 0; j < H; j++) dh[(size_t)r * H + j] = dh_in[j] * (rm ? rm[j] : 1.0f);
            if (rm) /* d rmask += h_prev dh_in (dh_in is 0 where padded) */
                for (int j = 0; j < H; j++)
                    p->d_rmask[(size_t)(lo + r) * H + j] += p->h_prev[(row + r) * H + j] * dh_in[j];
        }
    }
    free(dzs);
    free(dxh);
    free(order);
    free(xht);
    free(zero);
    free(dz2);
    free(xht2);
    free(dzs2);
    free(c);
    free(tc);
}

/* Backward over the T steps, in the opposite order to the forward's. a, c_prev, h_prev
 * [T, B, ...] as the forward saved them; x, w, u, mask, rmask as it read them; dh_n, dc_n
 * [B, H]: the final state's gradients; d_out [T, B, H]: the outputs' (NULL: zero). Writes
 * dx [T, B, F], dw [F, 4H], du [H, 4H], dbias [4H], the start state's dh0, dc0 [B, H] and,
 * with rmask, its gradient d_rmask [B, H]. Per step, as cell.lstm_step_backward:
 *   dc~ = dc + dh o (1 - tanh^2 c),  dz = [dc~ g i(1-i), dc~ c_prev f(1-f), dc~ i (1-g^2),
 *   dh tanh(c) o(1-o)] (0 where padded),  dc_prev = dc~ f,
 *   [dx_t, dh_in] = dz.[w; u]^T,  dh_prev = dh_in r (dh passes unchanged where padded),
 *   [dw; du] += [x_t, h_prev r]^T.dz,  dbias += dz,  d_rmask += h_prev dh_in
 * The weight gradients are summed in the loop, each part over its rows, then the parts' sums
 * in order: dz [T, B, 4H] is never stored (a large fresh buffer is slow to touch). bf16: every
 * product on bfloat16 operands (see the top). */
void lstm_backward(Spawn spawn, void *pool, int T, int B, int H, int F, int reverse, int bf16,
                   const float *a, const float *c_prev, const float *h_prev, const float *x,
                   const float *w, const float *u, const float *dh_n, const float *dc_n,
                   const float *d_out, const float *mask, const float *rmask, float *dx,
                   float *dw, float *du, float *dbias, float *dh0, float *dc0, float *d_rmask) {
    int G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H, Kp = (K + 15) / 16 * 16, parts = parts_for(B);
    float *wut = calloc((size_t)G * Kp, sizeof(float));
    for (int j = 0; j < G; j++)
        for (int k = 0; k < K; k++)
            wut[(size_t)j * Kp + k] = k < F ? w[(size_t)k * G + j] : u[(size_t)(k - F) * G + j];
    pair *wut2 = bf16 ? malloc((size_t)(G / 2) * Kp * sizeof(pair)) : NULL;
    if (bf16) pack_cols(G, Kp, wut, Kp, wut2);
    float *sums = calloc((size_t)parts * (K + 1) * Gp, sizeof(float));
    memcpy(dh0, dh_n, (size_t)B * H * sizeof(float)); /* dh0, dc0 carry dh, dc */
    memcpy(dc0, dc_n, (size_t)B * H * sizeof(float));
    if (rmask) memset(d_rmask, 0, (size_t)B * H * sizeof(float)); /* each row's, by one part */
    Backward context = {T, B, H, F, reverse, bf16, a, c_prev, h_prev, x, d_out, mask, rmask,
                        bf16 ? (const void *)wut2 : wut, dx, dh0, dc0, sums, d_rmask};
    huge_pages(dx, (size_t)T * B * F * sizeof(float));
    in_parts(backward_rows, &context, B, parts, spawn, pool);
    for (int k = 0; k <= K; k++) {
        float *to = k < F ? dw + (size_t)k * G : k < K ? du + (size_t)(k - F) * G : dbias;
        for (int j = 0; j < G; j++) {
            float total = 0.0f;
            for (int q = 0; q < parts; q++) total += sums[((size_t)q * (K + 1) + k) * Gp + j];
            to[j] = total;
        }
    }
    free(wut);
    free(wut2);
    free(sums);
}
