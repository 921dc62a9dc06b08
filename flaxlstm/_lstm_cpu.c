/* The LSTM's time loop for the CPU, forward and backward, in C (flaxlstm/native.py calls it
 * through XLA's FFI, flaxlstm/_lstm_cpu_ffi.cc).
 *
 * XLA:CPU pays a fixed cost for every operation of a loop's body, every step; at the sizes of
 * the seeds' models that cost, not arithmetic, is most of a step (docs/PERFORMANCE.md). Here
 * one call runs all T steps. The batch rows are independent, so the rows are cut into one part
 * per CPU this process may run on, and each part goes through every step on its own thread
 * with no synchronisation between steps (threads started per call and joined: nothing is left
 * spinning between calls). Each step's products are register-tiled (8 rows x 32 columns of
 * accumulators); everything else of a step is one pass over [rows, H]. Arrays are float32,
 * time-major, C-contiguous.
 *
 * Gates are laid out [i, f, g, o] along the last axis of size 4H, as flaxlstm/cell.py has them:
 *   z = x_t.W + b + h.U,  i, f, o = sigma(z_i, z_f, z_o),  g = tanh(z_g)
 *   c = f * c_prev + i * g,  h = o * tanh(c)
 * A padded step (mask 0) keeps the state and outputs 0, as recurrent.keep_state_where_padded.
 * A recurrent dropout mask r [B, H] (variational: the same at every step) multiplies h where
 * it enters the product: z = x_t.W + b + (h * r).U. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, v16 v) { memcpy(p, &v, sizeof v); }

/* One tile of out = base + in.m: R rows x 16Q columns from column c, the accumulators held in
 * registers over the whole k loop. Strides in floats; m's is n. out may be base. */
#define TILE(R, Q)                                                                               \
    static void tile_##R##x##Q(int k, int n, int c, const float *in, int in_stride,             \
                               const float *m, const float *base, int base_stride, float *out,  \
                               int out_stride) {                                                 \
        v16 acc[R][Q];                                                                           \
        for (int r = 0; r < R; r++)                                                              \
            for (int q = 0; q < Q; q++) acc[r][q] = load(base + r * base_stride + c + 16 * q);   \
        for (int i = 0; i < k; i++) {                                                            \
            v16 mi[Q];                                                                           \
            for (int q = 0; q < Q; q++) mi[q] = load(m + (size_t)i * n + c + 16 * q);            \
            for (int r = 0; r < R; r++) {                                                        \
                float a = in[r * in_stride + i];                                                 \
                for (int q = 0; q < Q; q++) acc[r][q] += a * mi[q];                              \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int q = 0; q < Q; q++) store(out + r * out_stride + c + 16 * q, acc[r][q]);     \
    }
TILE(8, 2)
TILE(1, 2)
TILE(8, 1)
TILE(1, 1)

/* out[r, :n] = base[r, :n] + in[r, :k].m[:k, :n] for every row r < rows (n a multiple of 16;
 * base_stride 0 adds the same row to every row). Column panels outside, rows inside: a panel
 * of m (k x 32) stays in cache while every row block reads it. */
static void gemm(int rows, int k, int n, const float *in, int in_stride, const float *m,
                 const float *base, int base_stride, float *out, int out_stride) {
#define ROWS(Q)                                                                                  \
    for (int r = 0; r < rows;) {                                                                 \
        const float *ir = in + r * in_stride, *br = base + r * base_stride;                      \
        float *outr = out + r * out_stride;                                                      \
        if (r + 8 <= rows) {                                                                     \
            tile_8x##Q(k, n, c, ir, in_stride, m, br, base_stride, outr, out_stride);            \
            r += 8;                                                                              \
        } else {                                                                                 \
            tile_1x##Q(k, n, c, ir, in_stride, m, br, base_stride, outr, out_stride);            \
            r += 1;                                                                              \
        }                                                                                        \
    }
    int c = 0;
    for (; c + 32 <= n; c += 32) ROWS(2)
    for (; c < n; c += 16) ROWS(1)
#undef ROWS
}

/* Runs work(context, part, lo, hi) on parts of the rows [0, B), one thread per part, the
 * first on the calling thread; returns when all are done. */
typedef void (*Work)(const void *context, int part, int lo, int hi);
typedef struct {
    Work work;
    const void *context;
    int part, lo, hi;
} Job;

static void *run_job(void *job) {
    const Job *j = job;
    j->work(j->context, j->part, j->lo, j->hi);
    return NULL;
}

enum { MAX_PARTS = 64 };

/* One part per CPU this process may run on (its affinity), at most B. */
static int parts_for(int B) {
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    int parts = cpus < B ? cpus : B;
    return parts < 1 ? 1 : parts > MAX_PARTS ? MAX_PARTS : parts;
}

static void in_parts(Work work, const void *context, int B, int parts) {
    Job jobs[MAX_PARTS];
    pthread_t threads[MAX_PARTS];
    int started[MAX_PARTS] = {0};
    for (int p = 0; p < parts; p++) jobs[p] = (Job){work, context, p, B * p / parts, B * (p + 1) / parts};
    for (int p = 1; p < parts; p++) started[p] = pthread_create(&threads[p], NULL, run_job, &jobs[p]) == 0;
    run_job(&jobs[0]);
    for (int p = 1; p < parts; p++) {
        if (started[p])
            pthread_join(threads[p], NULL);
        else
            run_job(&jobs[p]); /* no thread to be had: this one does it */
    }
}

static inline float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

typedef struct {
    int T, B, H, F, reverse, save;
    const float *x, *mask, *rmask, *wu, *base; /* wu = [w; u], base = bias, 4H padded to Gp */
    float *a, *c_prev, *h_prev, *out, *c_n, *h_n;
} Forward;

static void forward_rows(const void *context, int part, int lo, int hi) {
    const Forward *p = context;
    int T = p->T, B = p->B, H = p->H, F = p->F, G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H;
    int rows = hi - lo;
    float *z = calloc((size_t)rows * Gp, sizeof(float)), *xh = calloc((size_t)rows * K, sizeof(float));
    float *c_n = p->c_n + (size_t)lo * H, *h_n = p->h_n + (size_t)lo * H; /* the carried state */
    (void)part;
    for (int s = 0; s < T; s++) {
        size_t row = (size_t)(p->reverse ? T - 1 - s : s) * B + lo;
        if (p->save) {
            memcpy(p->c_prev + row * H, c_n, (size_t)rows * H * sizeof(float));
            memcpy(p->h_prev + row * H, h_n, (size_t)rows * H * sizeof(float));
        }
        for (int r = 0; r < rows; r++) { /* [x_t, h r] */
            const float *rm = p->rmask ? p->rmask + (size_t)(lo + r) * H : NULL;
            memcpy(xh + (size_t)r * K, p->x + (row + r) * F, F * sizeof(float));
            for (int j = 0; j < H; j++)
                xh[(size_t)r * K + F + j] = h_n[(size_t)r * H + j] * (rm ? rm[j] : 1.0f);
        }
        gemm(rows, K, Gp, xh, K, p->wu, p->base, 0, z, Gp); /* z = [x_t, h r].[w; u] + bias */
        for (int r = 0; r < rows; r++) {
            float m = p->mask ? p->mask[row + r] : 1.0f;
            float *zr = z + (size_t)r * Gp, *cr = c_n + (size_t)r * H, *hr = h_n + (size_t)r * H;
            float *ar = p->save ? p->a + (row + r) * G : zr, *outr = p->out + (row + r) * H;
#pragma omp simd
            for (int j = 0; j < H; j++) {
                float i_ = sigmoid(zr[j]), f_ = sigmoid(zr[H + j]);
                float g_ = tanhf(zr[2 * H + j]), o_ = sigmoid(zr[3 * H + j]);
                float c = f_ * cr[j] + i_ * g_, h = o_ * tanhf(c);
                ar[j] = i_, ar[H + j] = f_, ar[2 * H + j] = g_, ar[3 * H + j] = o_;
                cr[j] = m != 0.0f ? c : cr[j];
                hr[j] = m != 0.0f ? h : hr[j];
                outr[j] = m != 0.0f ? h : 0.0f;
            }
        }
    }
    free(z);
    free(xh);
}

/* Forward over T steps of B rows (from the last step to the first when reverse; every array
 * stays in time order). x [T, B, F], w [F, 4H], u [H, 4H], bias [4H], c0, h0 [B, H], mask
 * [T, B] (1 real, 0 padded; NULL: all real), rmask [B, H] (NULL: none). Writes the outputs
 * out [T, B, H], the final state c_n, h_n [B, H] and, when save (for the backward), the
 * activated gates a [T, B, 4H] and the state each step starts from, c_prev, h_prev [T, B, H].
 * Each step's product is
 * [x_t, h r].[w; u] + bias: one product, and no [T, B, 4H] input projection in memory. */
void lstm_forward(int T, int B, int H, int F, int reverse, int save, const float *x,
                  const float *w, const float *u, const float *bias, const float *c0,
                  const float *h0, const float *mask, const float *rmask, float *a,
                  float *c_prev, float *h_prev, float *out, float *c_n, float *h_n) {
    int G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H;
    float *wu = calloc((size_t)K * Gp, sizeof(float)), *base = calloc((size_t)Gp, sizeof(float));
    for (int k = 0; k < K; k++)
        memcpy(wu + (size_t)k * Gp, k < F ? w + (size_t)k * G : u + (size_t)(k - F) * G,
               G * sizeof(float));
    memcpy(base, bias, G * sizeof(float));
    memcpy(c_n, c0, (size_t)B * H * sizeof(float));
    memcpy(h_n, h0, (size_t)B * H * sizeof(float));
    Forward context = {T, B, H, F, reverse, save, x, mask, rmask, wu, base,
                       a, c_prev, h_prev, out, c_n, h_n};
    in_parts(forward_rows, &context, B, parts_for(B));
    free(wu);
    free(base);
}

typedef struct {
    int T, B, H, F, reverse;
    const float *a, *c_prev, *h_prev, *x, *d_out, *mask, *rmask, *wut; /* wut: [w; u]^T */
    float *dx, *dh, *dc, *sums, *d_rmask; /* sums: each part's [dw; du; dbias] [K + 1, Gp] */
} Backward;

/* The backward adds [x_t, h_prev, 1]^T.dz to the weight gradients' sums for this many steps
 * at once: one product over SUM_STEPS * rows instead of a pass over the sums every step. */
enum { SUM_STEPS = 8 };

static void backward_rows(const void *context, int part, int lo, int hi) {
    const Backward *p = context;
    int T = p->T, B = p->B, H = p->H, F = p->F, G = 4 * H, Gp = (G + 15) / 16 * 16;
    int K = F + H, Kp = (K + 15) / 16 * 16, rows = hi - lo, block = SUM_STEPS * rows;
    /* the last SUM_STEPS steps' dz [block, Gp] and [x_t, h_prev, 1]^T [K + 1, block] */
    float *dzs = calloc((size_t)block * Gp, sizeof(float)), *xh1t = calloc((size_t)(K + 1) * block, sizeof(float));
    float *dxh = calloc((size_t)rows * Kp, sizeof(float));
    float *zero = calloc((size_t)Kp, sizeof(float)), *sum = p->sums + (size_t)part * (K + 1) * Gp;
    float *dh = p->dh + (size_t)lo * H, *dc = p->dc + (size_t)lo * H; /* carried */
    for (int s = T - 1, done = 0; s >= 0; s--, done++) {
        size_t row = (size_t)(p->reverse ? T - 1 - s : s) * B + lo;
        int slot = done % SUM_STEPS;
        float *dz = dzs + (size_t)slot * rows * Gp, *xh1t_s = xh1t + (size_t)slot * rows;
        for (int r = 0; r < rows; r++) {
            float m = p->mask ? p->mask[row + r] : 1.0f;
            const float *ar = p->a + (row + r) * G, *cp = p->c_prev + (row + r) * H;
            const float *dout = p->d_out + (row + r) * H;
            float *dzr = dz + (size_t)r * Gp, *dhr = dh + (size_t)r * H, *dcr = dc + (size_t)r * H;
#pragma omp simd
            for (int j = 0; j < H; j++) {
                float i_ = ar[j], f_ = ar[H + j], g_ = ar[2 * H + j], o_ = ar[3 * H + j];
                float tc = tanhf(f_ * cp[j] + i_ * g_); /* c recomputed */
                int real = m != 0.0f;
                float d_h = dhr[j] + (real ? dout[j] : 0.0f);
                float d_c = dcr[j] + d_h * o_ * (1 - tc * tc);
                dzr[j] = real ? d_c * g_ * i_ * (1 - i_) : 0.0f;
                dzr[H + j] = real ? d_c * cp[j] * f_ * (1 - f_) : 0.0f;
                dzr[2 * H + j] = real ? d_c * i_ * (1 - g_ * g_) : 0.0f;
                dzr[3 * H + j] = real ? d_h * tc * o_ * (1 - o_) : 0.0f;
                dcr[j] = real ? d_c * f_ : dcr[j];
                dhr[j] = d_h; /* what a padded step passes back */
            }
            for (int k = 0; k < F; k++) xh1t_s[(size_t)k * block + r] = p->x[(row + r) * F + k];
            const float *rm = p->rmask ? p->rmask + (size_t)(lo + r) * H : NULL;
            for (int k = 0; k < H; k++)
                xh1t_s[(size_t)(F + k) * block + r] = p->h_prev[(row + r) * H + k] * (rm ? rm[k] : 1.0f);
            xh1t_s[(size_t)K * block + r] = 1.0f;
        }
        gemm(rows, G, Kp, dz, Gp, p->wut, zero, 0, dxh, Kp); /* [dx_t, dh_prev] = dz.[w; u]^T */
        if (slot == SUM_STEPS - 1 || s == 0) /* [dw; du; dbias] += the last steps' products */
            gemm(K + 1, (slot + 1) * rows, Gp, xh1t, block, dzs, sum, Gp, sum, Gp);
        for (int r = 0; r < rows; r++) {
            memcpy(p->dx + (row + r) * F, dxh + (size_t)r * Kp, F * sizeof(float));
            const float *dh_in = dxh + (size_t)r * Kp + F; /* the gradient of h r */
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
    free(xh1t);
    free(zero);
}

/* Backward over the T steps, in the opposite order to the forward's. a, c_prev, h_prev
 * [T, B, ...] as the forward saved them; x, w, u, mask, rmask as it read them; dh_n, dc_n
 * [B, H]: the final state's gradients; d_out [T, B, H]: the outputs'. Writes dx [T, B, F],
 * dw [F, 4H], du [H, 4H], dbias [4H], the start state's dh0, dc0 [B, H] and, with rmask, its
 * gradient d_rmask [B, H]. Per step, as cell.lstm_step_backward:
 *   dc~ = dc + dh o (1 - tanh^2 c),  dz = [dc~ g i(1-i), dc~ c_prev f(1-f), dc~ i (1-g^2),
 *   dh tanh(c) o(1-o)] (0 where padded),  dc_prev = dc~ f,
 *   [dx_t, dh_in] = dz.[w; u]^T,  dh_prev = dh_in r (dh passes unchanged where padded),
 *   [dw; du; dbias] += [x_t, h_prev r, 1]^T.dz,  d_rmask += h_prev dh_in
 * The weight gradients are summed in the loop, each part over its rows, then the parts' sums
 * in order: dz [T, B, 4H] is never stored (a large fresh buffer is slow to touch). */
void lstm_backward(int T, int B, int H, int F, int reverse, const float *a, const float *c_prev,
                   const float *h_prev, const float *x, const float *w, const float *u,
                   const float *dh_n, const float *dc_n, const float *d_out, const float *mask,
                   const float *rmask, float *dx, float *dw, float *du, float *dbias,
                   float *dh0, float *dc0, float *d_rmask) {
    int G = 4 * H, Gp = (G + 15) / 16 * 16, K = F + H, Kp = (K + 15) / 16 * 16, parts = parts_for(B);
    float *wut = calloc((size_t)G * Kp, sizeof(float));
    for (int j = 0; j < G; j++)
        for (int k = 0; k < K; k++)
            wut[(size_t)j * Kp + k] = k < F ? w[(size_t)k * G + j] : u[(size_t)(k - F) * G + j];
    float *sums = calloc((size_t)parts * (K + 1) * Gp, sizeof(float));
    memcpy(dh0, dh_n, (size_t)B * H * sizeof(float)); /* dh0, dc0 carry dh, dc */
    memcpy(dc0, dc_n, (size_t)B * H * sizeof(float));
    if (rmask) memset(d_rmask, 0, (size_t)B * H * sizeof(float)); /* each row's, by one part */
    Backward context = {T, B, H, F, reverse, a, c_prev, h_prev, x, d_out, mask, rmask, wut,
                        dx, dh0, dc0, sums, d_rmask};
    in_parts(backward_rows, &context, B, parts);
    for (int k = 0; k <= K; k++) {
        float *to = k < F ? dw + (size_t)k * G : k < K ? du + (size_t)(k - F) * G : dbias;
        for (int j = 0; j < G; j++) {
            float total = 0.0f;
            for (int q = 0; q < parts; q++) total += sums[((size_t)q * (K + 1) + k) * Gp + j];
            to[j] = total;
        }
    }
    free(wut);
    free(sums);
}
