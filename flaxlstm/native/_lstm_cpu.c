/* The LSTM's time loop for the CPU, forward and backward, in C (flaxlstm/native/__init__.py
 * calls it through XLA's FFI, _lstm_cpu_ffi.cc).
 *
 * It repeats, in C, what these Python functions compute, step for step:
 *   flaxlstm/cell.py       activate_all (the gates by one tanh), cell_update (c and h),
 *                          lstm_step_backward (dz, dc_prev: the derived backward)
 *   flaxlstm/recurrent.py  keep_state_where_padded (a padded step), _fused_forward and
 *                          _fused_scan_bwd's loop on jax.lax.scan (z = [x_t, h r].[W; U] + b,
 *                          the weight gradients summed)
 * tests/test_native.py holds the two equal (outputs, final states, every gradient, on every
 * instruction set the CPU runs), and tests/test_speed_paths.py holds the scanned loop equal to
 * jax autodiff and to the numpy LSTM of tests/reference.py.
 *
 * XLA:CPU pays a fixed cost for every operation of a loop's body, every step; at the sizes of
 * the seeds' models that cost, not arithmetic, is most of a step (docs/PERFORMANCE.md). Here
 * one call runs all T steps. The batch rows are independent, so the rows are cut into one part
 * per CPU this process may run on, and each part goes through every step on one thread with
 * no synchronisation between steps: the calling thread and helpers on XLA's own thread pool
 * (in_parts; no thread is left spinning between calls). A step computes only the rows of
 * its part that are real at that step (rows_to_compute: a batch cut to a bucket's width still
 * pads its shorter reviews). Each step's products are register-tiled, on weights packed
 * once per call into the tiles' column panels; everything else of a step is one pass over
 * [rows, H]. Arrays are float32, time-major, C-contiguous.
 *
 * Instruction sets: the library is compiled for plain x86-64, so that it loads on every
 * x86-64 CPU, and the steps (_lstm_cpu_steps.h) are compiled twice more under `#pragma GCC
 * target`: for AVX2 + FMA (tiles of up to 6 rows x 16 columns, 8-float ymm vectors) and for
 * AVX-512 (up to 8 rows x 32 columns, 16-float zmm). lstm_best_isa() reads the CPU's (CPUID,
 * through gcc's __builtin_cpu_supports) and the caller passes the one to run
 * (flaxlstm.native chooses once at load; FLAXLSTM_NATIVE_ISA forces a lower one);
 * bfloat16 products need ISA_BF16, a CPU with AVX512-BF16. A CPU without AVX2 + FMA runs no
 * C loop (the scan instead).
 *
 * Gates are laid out [i, f, g, o] along the last axis of size 4H, as flaxlstm/cell.py has them:
 *   z = x_t.W + b + h.U,  i, f, o = sigma(z_i, z_f, z_o),  g = tanh(z_g)
 *   c = f * c_prev + i * g,  h = o * tanh(c)
 * A padded step (mask 0) keeps the state and outputs 0, as recurrent.keep_state_where_padded.
 * A recurrent dropout mask r [B, H] (variational: the same at every step) multiplies h where
 * it enters the product: z = x_t.W + b + (h * r).U.
 *
 * With bf16 set (on ISA_BF16 only), every product takes bfloat16 operands, rounded to nearest
 * even, and accumulates in float32 (vdpbf16ps: two products per 32-bit lane), as lstm_scan's
 * matmul_dtype=bfloat16 does: the bias is rounded too, everything else (gates, states, sums)
 * stays float32. */
#if !defined(__x86_64__) || !defined(__linux__)
#error "the C loop is written for x86-64 Linux (setup.py builds it only there)"
#endif
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The instruction sets, in order: each runs on a CPU that has every feature of the ones below. */
enum { ISA_NONE, ISA_AVX2, ISA_AVX512, ISA_BF16 };

/* The best set this CPU runs: AVX2 + FMA, AVX-512 (F, BW, DQ, VL), then AVX512-BF16 too.
 * __builtin_cpu_supports also checks that the OS saves the vector registers. */
int lstm_best_isa(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return ISA_NONE;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl"))
        return ISA_AVX2;
    return __builtin_cpu_supports("avx512bf16") ? ISA_BF16 : ISA_AVX512;
}

/* The products' register tiles, for float32 (In float, each k one multiply-add) and for
 * bfloat16 pairs (In pair, below: each k two, vdpbf16ps). One tile of out = base + in.m: R rows
 * x VEC * Q columns, the accumulators held in registers over the whole k loop, m's rows loaded
 * once for all R rows. m, base and out point at the tile's first column; strides in In (m's:
 * m_stride). out may be base. VECTOR (of VEC floats), VLOAD and VSTORE are the including
 * instruction set's (_lstm_cpu_steps.h). */
#define TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, R, Q)                                         \
    static void NAME##_##R##x##Q(int k, const In *in, int in_stride, const In *m, int m_stride,  \
                                 const float *base, int base_stride, float *out, int out_stride) { \
        VECTOR acc[R][Q];                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int q = 0; q < Q; q++) acc[r][q] = VLOAD(base + r * base_stride + VEC * q);     \
        for (int i = 0; i < k; i++) {                                                            \
            Mv mi[Q];                                                                            \
            for (int q = 0; q < Q; q++) mi[q] = LOAD_M(m + (size_t)i * m_stride + VEC * q);      \
            for (int r = 0; r < R; r++) {                                                        \
                Mv a = BROADCAST(in[r * in_stride + i]);                                         \
                for (int q = 0; q < Q; q++) acc[r][q] = MADD(acc[r][q], a, mi[q]);               \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int q = 0; q < Q; q++) VSTORE(out + r * out_stride + VEC * q, acc[r][q]);       \
    }
#define TILES_OF_WIDTH(NAME, In, Mv, LOAD_M, BROADCAST, MADD, Q)                                 \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 1, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 2, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 3, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 4, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 5, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 6, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 7, Q)                                            \
    TILE(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 8, Q)

/* Where m's rows lie at least this many bytes apart (a page), a panel of it is copied into
 * contiguous memory before the tiles read it (below). */
enum { COPY_STRIDE_BYTES = 4 << 10 };

/* NAME(rows, k, n, in, in_stride, m, packed, ..., panel): out[r, :n] = base[r, :n] +
 * in[r, :k].m[:k, :n] for every row r < rows (n a multiple of 16; base_stride 0 adds the same
 * row to every row). Column panels outside, rows inside: a panel of m (k x 2 VEC) is read by
 * every tile of rows. The rows are cut into as few tiles of at most TALL rows as there can be,
 * of equal heights (13 rows: 5, 4, 4 with TALL 6), so that no short tile reloads m for one or
 * two rows; tiles are 2 or 1 vectors wide. m is [k, n] row-major, or when packed its panels
 * one after the other (pack_panels: the weights, packed once per call). Read in place, m's
 * rows lie n elements apart (8 KiB at H 512), a new page every row or two, which the
 * prefetchers do not follow: where several tiles read a panel whose rows lie a page apart
 * (COPY_STRIDE_BYTES), it is first copied into panel [k, 2 VEC] (scratch; NULL: never), as
 * BLAS kernels do. (Closer rows stay in place: copying them cost seed 003's step 5 %.) */
#define GEMM(NAME, In)                                                                           \
    typedef void (*NAME##_tile)(int, const In *, int, const In *, int, const float *, int,       \
                                float *, int);                                                   \
    static void NAME(int rows, int k, int n, const In *in, int in_stride, const In *m,           \
                     int packed, const float *base, int base_stride, float *out, int out_stride, \
                     In *panel) {                                                                \
        static const NAME##_tile wide[] = {NULL, NAME##_1x2, NAME##_2x2, NAME##_3x2, NAME##_4x2, \
                                           NAME##_5x2, NAME##_6x2, NAME##_7x2, NAME##_8x2};      \
        static const NAME##_tile narrow[] = {NULL, NAME##_1x1, NAME##_2x1, NAME##_3x1,           \
                                             NAME##_4x1, NAME##_5x1, NAME##_6x1, NAME##_7x1,     \
                                             NAME##_8x1};                                        \
        int tiles = (rows + TALL - 1) / TALL;                                                    \
        for (int c = 0, q; c < n; c += VEC * q) {                                                \
            q = c + 2 * VEC <= n ? 2 : 1;                                                        \
            const In *mc = packed ? m + (size_t)c * k : m + c;                                   \
            int m_stride = packed ? VEC * q : n;                                                 \
            if (!packed && panel && tiles > 1 && (size_t)n * sizeof(In) >= COPY_STRIDE_BYTES) {  \
                for (int i = 0; i < k; i++)                                                      \
                    memcpy(panel + (size_t)i * VEC * q, mc + (size_t)i * n, VEC * q * sizeof(In)); \
                mc = panel, m_stride = VEC * q;                                                  \
            }                                                                                    \
            for (int t = 0; t < tiles; t++) {                                                    \
                int r = rows * t / tiles, R = rows * (t + 1) / tiles - r;                        \
                (q == 2 ? wide : narrow)[R](k, in + r * in_stride, in_stride, mc, m_stride,      \
                                            base + r * base_stride + c, base_stride,             \
                                            out + r * out_stride + c, out_stride);               \
            }                                                                                    \
        }                                                                                        \
    }
#define TILES(NAME, In, Mv, LOAD_M, BROADCAST, MADD)                                             \
    TILES_OF_WIDTH(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 1)                                     \
    TILES_OF_WIDTH(NAME, In, Mv, LOAD_M, BROADCAST, MADD, 2)                                     \
    GEMM(NAME, In)

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

/* m [k, n] of 4-byte elements (floats or pairs; n a multiple of 16) as GEMM's packed panels,
 * for vectors of vec elements: for each panel of 2 vec columns (vec for a last odd one), its
 * k rows one after the other, into out [k, n]. */
static void pack_panels(int k, int n, const void *m, int vec, void *out) {
    char *to = out;
    for (int c = 0, w; c < n; c += w) {
        w = c + 2 * vec <= n ? 2 * vec : vec;
        for (int i = 0; i < k; i++, to += (size_t)w * 4)
            memcpy(to, (const char *)m + ((size_t)i * n + c) * 4, (size_t)w * 4);
    }
}

/* bfloat16: k pairs of in's row against k rows of pairs of m, two products per lane
 * (AVX512-BF16's vdpbf16ps; called only where lstm_best_isa() is ISA_BF16). */
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")
#define ISA(name) name##_bf16
#define VEC 16
#define TALL 8
typedef float ISA(vec) __attribute__((vector_size(64)));
static inline ISA(vec) ISA(load)(const float *p) { return (ISA(vec))_mm512_loadu_ps(p); }
static inline void ISA(store)(float *p, ISA(vec) v) { _mm512_storeu_ps(p, (__m512)v); }
#define VECTOR ISA(vec)
#define VLOAD ISA(load)
#define VSTORE ISA(store)
#define LOAD_PAIRS(p) ((__m512bh)_mm512_loadu_si512(p))
#define BROADCAST_PAIR(x) ((__m512bh)_mm512_set1_epi32((int)(x)))
#define DOT_BF16(acc, a, mi) ((VECTOR)_mm512_dpbf16_ps((__m512)(acc), a, mi))
TILES(gemm_bf16, pair, __m512bh, LOAD_PAIRS, BROADCAST_PAIR, DOT_BF16)
#undef VECTOR
#undef VLOAD
#undef VSTORE
#undef ISA
#undef VEC
#undef TALL
#pragma GCC pop_options

/* A row of 4H's four gate slices, i, f, g, o: one pointer each, so that the compiler reads
 * each slice with plain vector loads (j + H indexing made gcc gather element by element). */
typedef struct {
    float *i, *f, *g, *o;
} Gates;
static inline Gates gates(const float *row, int H) {
    float *r = (float *)row;
    return (Gates){r, r + H, r + 2 * H, r + 3 * H};
}

/* The rows of a part to compute at one step, from their mask [rows] (NULL: all real): the
 * real rows in order, then the padded ones, skipped (they keep their state; the products'
 * tiles take any number of rows, GEMM). order [rows] receives them all; returns how many are
 * computed. The forward and the backward make the same choice from the same mask, so the
 * backward reads only what the forward wrote. */
static int rows_to_compute(const float *mask, int rows, int *order) {
    int n = 0;
    for (int r = 0; r < rows; r++)
        if (!mask || mask[r] != 0.0f) order[n++] = r;
    int computed = n;
    for (int r = 0; r < rows && mask; r++)
        if (mask[r] == 0.0f) order[n++] = r;
    return computed;
}

typedef struct {
    int T, B, H, F, reverse, save, bf16;
    const float *x, *mask, *rmask, *base; /* base = bias, 4H padded to Gp */
    const float *scale; /* [Gp]: 1 in g's columns, 1/2 elsewhere (forward_rows) */
    const void *wu; /* [w; u] [K, Gp], or its pairs when bf16, packed (pack_panels) */
    float *a, *c_prev, *h_prev, *out, *c_n, *h_n;
} Forward;

typedef struct {
    int T, B, H, F, reverse, bf16;
    const float *a, *c_prev, *h_prev, *x, *d_out, *mask, *rmask;
    const void *wut; /* [w; u]^T [4H, Kp], or its pairs when bf16, packed (pack_panels) */
    float *dx, *dh, *dc, *sums, *d_rmask; /* sums: each part's [dw; du; dbias] [K + 1, Gp] */
} Backward;

/* The scratch GEMM copies m's panels into, for k rows: 2 vectors of 16 at the most. */
#define PANEL_FLOATS(k) ((size_t)(k) * 32)

/* The backward adds [x_t, h_prev]^T.dz to the weight gradients' sums for this many steps at
 * once: one product over SUM_STEPS * rows instead of a pass over the sums every step. */
enum { SUM_STEPS = 8 };

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA(name) name##_avx2
#define VEC 8
#define TALL 6
#include "_lstm_cpu_steps.h"
#undef ISA
#undef VEC
#undef TALL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")
#define ISA(name) name##_avx512
#define VEC 16
#define TALL 8
#include "_lstm_cpu_steps.h"
#undef ISA
#undef VEC
#undef TALL
#pragma GCC pop_options

/* Runs work(context, part, lo, hi) on parts of the rows [0, B) and returns when all are done:
 * 0, or -1 when a part or the bookkeeping could not allocate its memory. Helpers are started
 * with spawn(pool, task, arg) (XLA's own thread pool, handed to the FFI handler: its idle
 * threads take them at once, where a new thread would have to share a CPU with them), or on
 * new threads when spawn is NULL. The caller and its helpers each take the next part not yet
 * taken until none is left, so the parts are done even if no helper ever starts (a pool whose
 * every thread is busy); the caller then sleeps on a condition variable until the parts that
 * helpers took are done (no time-out: nothing may write into XLA's buffers after it returns),
 * and the last holder of the shared state frees it. */
typedef int (*Work)(const void *context, int part, int lo, int hi);
typedef void (*Spawn)(void *pool, void (*task)(void *), void *arg);
typedef struct {
    Work work;
    const void *context;
    int B, parts;
    pthread_mutex_t lock;
    pthread_cond_t all_done;
    int next, done, failed, holders; /* parts taken, parts done, failed, who may still read */
} Parts;

static void take_parts(Parts *ps) {
    for (;;) {
        pthread_mutex_lock(&ps->lock);
        int p = ps->next < ps->parts ? ps->next++ : -1;
        pthread_mutex_unlock(&ps->lock);
        if (p < 0) return;
        int failed = ps->work(ps->context, p, ps->B * p / ps->parts, ps->B * (p + 1) / ps->parts);
        pthread_mutex_lock(&ps->lock);
        ps->failed |= failed != 0;
        if (++ps->done == ps->parts) pthread_cond_signal(&ps->all_done);
        pthread_mutex_unlock(&ps->lock);
    }
}

static void let_go(Parts *ps) {
    pthread_mutex_lock(&ps->lock);
    int last = --ps->holders == 0;
    pthread_mutex_unlock(&ps->lock);
    if (!last) return;
    pthread_mutex_destroy(&ps->lock);
    pthread_cond_destroy(&ps->all_done);
    free(ps);
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
    if (!t || pthread_attr_init(&attr) != 0) {
        free(t);
        task(arg);
        return;
    }
    *t = (Task){task, arg};
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attr, run_task, t) != 0) run_task(t);
    pthread_attr_destroy(&attr);
}

enum { MAX_PARTS = 64 };

/* One part per CPU this process may run on (its affinity), at most `threads` (0: no limit;
 * XLA's devices on one CPU each take their share of it) and at most B. */
static int parts_for(int B, int threads) {
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    if (threads > 0 && threads < cpus) cpus = threads;
    int parts = cpus < B ? cpus : B;
    return parts < 1 ? 1 : parts > MAX_PARTS ? MAX_PARTS : parts;
}

static int in_parts(Work work, const void *context, int B, int parts, Spawn spawn, void *pool) {
    Parts *ps = malloc(sizeof *ps);
    if (!ps) return -1;
    *ps = (Parts){.work = work, .context = context, .B = B, .parts = parts, .holders = parts};
    pthread_mutex_init(&ps->lock, NULL);
    pthread_cond_init(&ps->all_done, NULL);
    for (int p = 1; p < parts; p++) (spawn ? spawn : spawn_thread)(pool, helper, ps);
    take_parts(ps);
    pthread_mutex_lock(&ps->lock);
    while (ps->done < parts) pthread_cond_wait(&ps->all_done, &ps->lock); /* helpers' parts */
    int failed = ps->failed;
    pthread_mutex_unlock(&ps->lock);
    let_go(ps);
    return failed ? -1 : 0;
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

/* The errors of lstm_forward and lstm_backward (0: none); lstm_error names each. */
enum { LSTM_OUT_OF_MEMORY = 1, LSTM_BAD_ISA };

const char *lstm_error(int error) {
    return error == LSTM_OUT_OF_MEMORY ? "flaxlstm's C loop could not allocate its memory"
           : error == LSTM_BAD_ISA     ? "flaxlstm's C loop was asked for an instruction set "
                                         "this CPU does not run (or bfloat16 products without "
                                         "AVX512-BF16)"
                                       : "";
}

/* Whether the loop can run isa (ISA_AVX2, ISA_AVX512, ISA_BF16) with bf16 products or not. */
static int runs(int isa, int bf16) {
    return isa >= ISA_AVX2 && isa <= lstm_best_isa() && (!bf16 || isa == ISA_BF16);
}

/* Forward over T steps of B rows (from the last step to the first when reverse; every array
 * stays in time order) on the instruction set isa. x [T, B, F], w [F, 4H], u [H, 4H], bias
 * [4H], c0, h0 [B, H], mask [T, B] (1 real, 0 padded; NULL: all real), rmask [B, H] (NULL:
 * none). Writes the outputs out [T, B, H] (NULL: none), the final state c_n, h_n [B, H] and,
 * when save (for the backward), the activated gates a [T, B, 4H] and the state each step
 * starts from, c_prev, h_prev [T, B, H]. Each step's product is [x_t, h r].[w; u] + bias: one
 * product, and no [T, B, 4H] input projection in memory; bf16: on bfloat16 operands (see the
 * top). The parts, at most `threads` (parts_for), run through spawn(pool, ...) (NULL: new
 * threads; in_parts). Returns 0 or an error (lstm_error). */
int lstm_forward(int isa, Spawn spawn, void *pool, int threads, int T, int B, int H, int F,
                 int reverse, int save, int bf16, const float *x, const float *w, const float *u,
                 const float *bias, const float *c0, const float *h0, const float *mask,
                 const float *rmask, float *a, float *c_prev, float *h_prev, float *out,
                 float *c_n, float *h_n) {
    if (!runs(isa, bf16)) return LSTM_BAD_ISA;
    int G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H, error = LSTM_OUT_OF_MEMORY;
    float *wu = calloc((size_t)K * Gp, sizeof(float)), *base = calloc((size_t)Gp, sizeof(float));
    float *scale = malloc((size_t)Gp * sizeof(float));
    int k2 = bf16 ? (K + 1) / 2 : K; /* m's rows: floats, or pairs of rows */
    pair *wu2 = bf16 ? malloc((size_t)k2 * Gp * sizeof(pair)) : NULL;
    float *packed = malloc((size_t)k2 * Gp * sizeof(float)); /* as GEMM reads it */
    if (!wu || !base || !scale || !packed || (bf16 && !wu2)) goto done;
    for (int k = 0; k < K; k++)
        memcpy(wu + (size_t)k * Gp, k < F ? w + (size_t)k * G : u + (size_t)(k - F) * G,
               G * sizeof(float));
    for (int j = 0; j < Gp; j++) scale[j] = j >= 2 * H && j < 3 * H ? 1.0f : 0.5f;
    for (int j = 0; j < G; j++) base[j] = bf16 ? bf16_round(bias[j]) : bias[j];
    if (bf16) pack_cols(K, Gp, wu, Gp, wu2);
    pack_panels(k2, Gp, bf16 ? (const void *)wu2 : wu, isa == ISA_AVX2 ? 8 : 16, packed);
    memcpy(c_n, c0, (size_t)B * H * sizeof(float));
    memcpy(h_n, h0, (size_t)B * H * sizeof(float));
    Forward context = {T, B, H, F, reverse, save, bf16, x, mask, rmask, base, scale,
                       packed, a, c_prev, h_prev, out, c_n, h_n};
    if (save) {
        huge_pages(a, (size_t)T * B * G * sizeof(float));
        huge_pages(c_prev, (size_t)T * B * H * sizeof(float));
        huge_pages(h_prev, (size_t)T * B * H * sizeof(float));
    }
    if (out) huge_pages(out, (size_t)T * B * H * sizeof(float));
    Work work = isa == ISA_AVX2 ? forward_rows_avx2 : forward_rows_avx512;
    int parts = parts_for(B, threads);
    error = in_parts(work, &context, B, parts, spawn, pool) ? LSTM_OUT_OF_MEMORY : 0;
done:
    free(wu);
    free(wu2);
    free(packed);
    free(base);
    free(scale);
    return error;
}

/* Backward over the T steps, in the opposite order to the forward's, on the instruction set
 * the forward ran on (its packed panels, pack_panels). a, c_prev, h_prev [T, B, ...]
 * as the forward saved them; x, w, u, mask, rmask as it read them; dh_n, dc_n [B, H]: the
 * final state's gradients; d_out [T, B, H]: the outputs' (NULL: zero). Writes dx [T, B, F],
 * dw [F, 4H], du [H, 4H], dbias [4H], the start state's dh0, dc0 [B, H] and, with rmask, its
 * gradient d_rmask [B, H]. Per step, as cell.lstm_step_backward:
 *   dc~ = dc + dh o (1 - tanh^2 c),  dz = [dc~ g i(1-i), dc~ c_prev f(1-f), dc~ i (1-g^2),
 *   dh tanh(c) o(1-o)] (0 where padded),  dc_prev = dc~ f,
 *   [dx_t, dh_in] = dz.[w; u]^T,  dh_prev = dh_in r (dh passes unchanged where padded),
 *   [dw; du] += [x_t, h_prev r]^T.dz,  dbias += dz,  d_rmask += h_prev dh_in
 * The weight gradients are summed in the loop, each part over its rows, then the parts' sums
 * in order: dz [T, B, 4H] is never stored (a large fresh buffer is slow to touch). bf16: every
 * product on bfloat16 operands (see the top). Returns 0 or an error (lstm_error). */
int lstm_backward(int isa, Spawn spawn, void *pool, int threads, int T, int B, int H, int F,
                  int reverse, int bf16, const float *a, const float *c_prev, const float *h_prev,
                  const float *x, const float *w, const float *u, const float *dh_n,
                  const float *dc_n, const float *d_out, const float *mask, const float *rmask,
                  float *dx, float *dw, float *du, float *dbias, float *dh0, float *dc0,
                  float *d_rmask) {
    if (!runs(isa, bf16)) return LSTM_BAD_ISA;
    int G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H, Kp = (K + 15) / 16 * 16;
    int parts = parts_for(B, threads), error = LSTM_OUT_OF_MEMORY;
    float *wut = calloc((size_t)G * Kp, sizeof(float));
    int g2 = bf16 ? G / 2 : G; /* m's rows: floats, or pairs of rows */
    pair *wut2 = bf16 ? malloc((size_t)g2 * Kp * sizeof(pair)) : NULL;
    float *packed = malloc((size_t)g2 * Kp * sizeof(float)); /* as GEMM reads it */
    float *sums = calloc((size_t)parts * (K + 1) * Gp, sizeof(float));
    if (!wut || !sums || !packed || (bf16 && !wut2)) goto done;
    for (int j = 0; j < G; j++)
        for (int k = 0; k < K; k++)
            wut[(size_t)j * Kp + k] = k < F ? w[(size_t)k * G + j] : u[(size_t)(k - F) * G + j];
    if (bf16) pack_cols(G, Kp, wut, Kp, wut2);
    pack_panels(g2, Kp, bf16 ? (const void *)wut2 : wut, isa == ISA_AVX2 ? 8 : 16, packed);
    memcpy(dh0, dh_n, (size_t)B * H * sizeof(float)); /* dh0, dc0 carry dh, dc */
    memcpy(dc0, dc_n, (size_t)B * H * sizeof(float));
    if (rmask) memset(d_rmask, 0, (size_t)B * H * sizeof(float)); /* each row's, by one part */
    Backward context = {T, B, H, F, reverse, bf16, a, c_prev, h_prev, x, d_out, mask, rmask,
                        packed, dx, dh0, dc0, sums, d_rmask};
    huge_pages(dx, (size_t)T * B * F * sizeof(float));
    Work work = isa == ISA_AVX2 ? backward_rows_avx2 : backward_rows_avx512;
    if (in_parts(work, &context, B, parts, spawn, pool)) goto done;
    for (int k = 0; k <= K; k++) {
        float *to = k < F ? dw + (size_t)k * G : k < K ? du + (size_t)(k - F) * G : dbias;
        for (int j = 0; j < G; j++) {
            float total = 0.0f;
            for (int q = 0; q < parts; q++) total += sums[((size_t)q * (K + 1) + k) * Gp + j];
            to[j] = total;
        }
    }
    error = 0;
done:
    free(wut);
    free(wut2);
    free(packed);
    free(sums);
    return error;
}
