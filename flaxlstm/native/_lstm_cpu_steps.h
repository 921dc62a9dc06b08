/* The loop's steps for one instruction set. _lstm_cpu.c includes this file once per set, each
 * time under that set's `#pragma GCC target`, so that the compiler emits the set's
 * instructions for everything here: the products' register tiles, the element-wise passes and
 * glibc's vector tanhf of the set's width. Defined before each inclusion:
 *   ISA(name)  name with the set's suffix (forward_rows_avx2, forward_rows_avx512, ...)
 *   VEC        floats in one vector register: 8 (AVX2's ymm), 16 (AVX-512's zmm)
 *   TALL       the most rows of a product's tile. A tile holds TALL x 2 vector accumulators,
 *              and each multiply-add step needs 2 vectors of m and one broadcast besides:
 *              they must all fit the set's registers, or the compiler spills around every
 *              multiply-add. AVX2: 6 x 2 + 2 + 1 = 15 of 16 ymm; AVX-512: 8 x 2 + 2 + 1 = 19
 *              of 32 zmm (on AVX2, 8 x 2 accumulators of 16 floats would need 32 ymm). */

typedef float ISA(vec) __attribute__((vector_size(VEC * 4)));

static inline ISA(vec) ISA(load)(const float *p) {
    ISA(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void ISA(store)(float *p, ISA(vec) v) { memcpy(p, &v, sizeof v); }

#define VECTOR ISA(vec)
#define VLOAD ISA(load)
#define VSTORE ISA(store)
#define SPLAT(x) ((VECTOR){} + (x))
#define FMA32(acc, a, mi) ((acc) + (a) * (mi))
TILES(ISA(gemm), float, VECTOR, VLOAD, SPLAT, FMA32)
#undef SPLAT
#undef FMA32

/* out = base + in.m for in [rows, k] (float32; rounded to pairs into the scratch in2 when m
 * is pairs) and m [k, n]: float32, or pairs [(k + 1) / 2, n] when bf16 (gemm_bf16, only
 * where the CPU has AVX512-BF16: lstm_forward and lstm_backward check); packed as GEMM's
 * panels or not. panel: scratch of PANEL_FLOATS(k) floats for an m not packed (GEMM; NULL:
 * none). */
static void ISA(product)(int bf16, int rows, int k, int n, const float *in, int in_stride,
                         pair *in2, const void *m, int packed, const float *base,
                         int base_stride, float *out, int out_stride, void *panel) {
    if (!bf16) {
        ISA(gemm)(rows, k, n, in, in_stride, m, packed, base, base_stride, out, out_stride, panel);
        return;
    }
    pack_rows(rows, k, in, in_stride, in2);
    gemm_bf16(rows, (k + 1) / 2, n, in2, (k + 1) / 2, m, packed, base, base_stride, out,
              out_stride, panel);
}

/* tanh of n floats, n a multiple of 16 (glibc's vector tanhf, VEC lanes at a time: a loop to
 * H = 100 would leave 4 lanes to the scalar tanhf, which costs as much as the other 96). */
static void ISA(tanh_all)(int n, const float *in, float *out) {
#pragma omp simd
    for (int j = 0; j < n; j++) out[j] = tanhf(in[j]);
}

/* The step's cell state c = f c_prev + i g [H] and tanh(c) [Hp] (c's padding stays 0), from
 * the activated gates a: the forward's, and the backward's recomputed. */
static inline void ISA(cell_state)(Gates a, const float *c_prev, int H, int Hp, float *c,
                                   float *tc) {
#pragma omp simd
    for (int j = 0; j < H; j++) c[j] = a.f[j] * c_prev[j] + a.i[j] * a.g[j];
    ISA(tanh_all)(Hp, c, tc);
}

/* Row r of the part from lo at step row ``row``: its [x_t, h r] into xh [K]. */
static inline void ISA(gather_xh)(const Forward *p, size_t row, int lo, int r, const float *h_n,
                                  float *xh) {
    int F = p->F, H = p->H;
    const float *rm = p->rmask ? p->rmask + (size_t)(lo + r) * H : NULL;
    memcpy(xh, p->x + (row + r) * F, F * sizeof(float));
    for (int j = 0; j < H; j++) xh[F + j] = h_n[(size_t)r * H + j] * (rm ? rm[j] : 1.0f);
}

/* One row's step (``at``: its index in [T, B]) from its z [Gp]: the gates in place, its c and
 * h (cr, hr [H]) where the step is real, its output and its saved gates. */
static inline void ISA(forward_row)(const Forward *p, size_t at, float *zr, float *cr,
                                    float *hr, float *c, float *tc) {
    int H = p->H, G = 4 * H, Gp = (G + 15) / 16 * 16, Hp = (H + 15) / 16 * 16;
    float m = p->mask ? p->mask[at] : 1.0f;
    float *outr = p->out ? p->out + at * H : NULL;
    /* the gates in place, the whole padded row in one pass: σ(z) = tanh(z/2)/2 + 1/2,
     * so a = s tanh(s z) + 1 - s with s = 1/2 for i, f, o and s = 1 for g */
#pragma omp simd
    for (int j = 0; j < Gp; j++) {
        float s = p->scale[j];
        zr[j] = s * tanhf(s * zr[j]) + 1 - s;
    }
    Gates a = gates(zr, H);
    ISA(cell_state)(a, cr, H, Hp, c, tc);
#pragma omp simd
    for (int j = 0; j < H; j++) {
        float h = a.o[j] * tc[j];
        cr[j] = m != 0.0f ? c[j] : cr[j];
        hr[j] = m != 0.0f ? h : hr[j];
    }
    if (outr) /* h where real, 0 where padded */
        for (int j = 0; j < H; j++) outr[j] = m != 0.0f ? hr[j] : 0.0f;
    if (p->save) memcpy(p->a + at * G, zr, G * sizeof(float));
}

/* Rows [lo, hi) through every step, forward (lstm_forward). Returns 0, or -1 when its scratch
 * cannot be allocated (nothing written then). */
static int ISA(forward_rows)(const void *context, int part, int lo, int hi) {
    const Forward *p = context;
    int T = p->T, B = p->B, H = p->H, G = 4 * H, Gp = (G + 15) / 16 * 16, K = p->F + H;
    int rows = hi - lo, Hp = (H + 15) / 16 * 16;
    float *z = calloc((size_t)rows * Gp, sizeof(float));
    float *xh = calloc((size_t)rows * K, sizeof(float));
    float *c = calloc((size_t)Hp, sizeof(float)), *tc = calloc((size_t)Hp, sizeof(float));
    pair *xh2 = p->bf16 ? calloc((size_t)rows * ((K + 1) / 2), sizeof(pair)) : NULL;
    int *order = malloc((size_t)rows * sizeof(int));
    int failed = !z || !xh || !c || !tc || !order || (p->bf16 && !xh2);
    float *c_n = p->c_n + (size_t)lo * H, *h_n = p->h_n + (size_t)lo * H; /* the carried state */
    (void)part;
    for (int s = 0; s < T && !failed; s++) {
        size_t row = (size_t)(p->reverse ? T - 1 - s : s) * B + lo;
        int n = rows_to_compute(p->mask ? p->mask + row : NULL, rows, order);
        if (p->save) {
            memcpy(p->c_prev + row * H, c_n, (size_t)rows * H * sizeof(float));
            memcpy(p->h_prev + row * H, h_n, (size_t)rows * H * sizeof(float));
        }
        for (int q = 0; q < n; q++) /* [x_t, h r], row q of the computed ones */
            ISA(gather_xh)(p, row, lo, order[q], h_n, xh + (size_t)q * K);
        /* z = [x_t, h r].[w; u] + bias */
        ISA(product)(p->bf16, n, K, Gp, xh, K, xh2, p->wu, 1, p->base, 0, z, Gp, NULL);
        for (int q = 0; q < n; q++) {
            int r = order[q];
            float *cr = c_n + (size_t)r * H, *hr = h_n + (size_t)r * H;
            ISA(forward_row)(p, row + r, z + (size_t)q * Gp, cr, hr, c, tc);
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
    return failed ? -1 : 0;
}

/* One row's step backward (``at``: its index in [T, B]): its dz [4H] from the gradients
 * carried into it (dhr, dcr [H]; ``zero`` [H] stands for no d_out), which it updates. */
static inline void ISA(backward_row)(const Backward *p, size_t at, float *dzr, float *dhr,
                                     float *dcr, float *c, float *tc, const float *zero) {
    int H = p->H, Hp = (H + 15) / 16 * 16;
    float m = p->mask ? p->mask[at] : 1.0f;
    const float *cp = p->c_prev + at * H;
    const float *dout = p->d_out ? p->d_out + at * H : zero; /* none: 0 */
    Gates ag = gates(p->a + at * 4 * H, H), dzg = gates(dzr, H);
    ISA(cell_state)(ag, cp, H, Hp, c, tc);
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
}

/* A computed row's [x_t, h_prev r] (``at``: its index in [T, B]; ``b``: its batch row) into
 * column 0 of xht [K, block]: what its dz multiplies for [dw; du]. */
static inline void ISA(gather_xht)(const Backward *p, size_t at, int b, float *xht, int block) {
    int F = p->F, H = p->H;
    const float *rm = p->rmask ? p->rmask + (size_t)b * H : NULL;
    for (int k = 0; k < F; k++) xht[(size_t)k * block] = p->x[at * F + k];
    for (int k = 0; k < H; k++)
        xht[(size_t)(F + k) * block] = p->h_prev[at * H + k] * (rm ? rm[k] : 1.0f);
}

/* A computed row's [dx_t, dh_in] (dxh_r, from dz.[w; u]^T) into dx, into the dh [H] it carries
 * to the step before, and into d rmask (``at``: its index in [T, B]; ``b``: its batch row). */
static inline void ISA(scatter_row)(const Backward *p, size_t at, int b, const float *dxh_r,
                                    float *dhr) {
    int F = p->F, H = p->H;
    memcpy(p->dx + at * F, dxh_r, F * sizeof(float));
    const float *dh_in = dxh_r + F; /* the gradient of h r */
    const float *rm = p->rmask ? p->rmask + (size_t)b * H : NULL;
    if (!p->mask || p->mask[at] != 0.0f) /* dh_prev = dh_in r */
        for (int j = 0; j < H; j++) dhr[j] = dh_in[j] * (rm ? rm[j] : 1.0f);
    if (rm) /* d rmask += h_prev dh_in (dh_in is 0 where padded) */
        for (int j = 0; j < H; j++)
            p->d_rmask[(size_t)b * H + j] += p->h_prev[at * H + j] * dh_in[j];
}

/* Rows [lo, hi) through every step, backward (lstm_backward), their weight gradients summed
 * into part's sums. Returns 0, or -1 when its scratch cannot be allocated. */
static int ISA(backward_rows)(const void *context, int part, int lo, int hi) {
    const Backward *p = context;
    int T = p->T, B = p->B, H = p->H, F = p->F, G = 4 * H, Gp = (G + 15) / 16 * 16;
    int K = F + H, Kp = (K + 15) / 16 * 16, rows = hi - lo, block = SUM_STEPS * rows;
    /* the last SUM_STEPS steps' dz [block, Gp] and [x_t, h_prev]^T [K, block] */
    float *dzs = calloc((size_t)block * Gp, sizeof(float));
    float *xht = calloc((size_t)K * block, sizeof(float));
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
    float *panel = malloc(PANEL_FLOATS(block) * sizeof(float)); /* for dzs' panels */
    int failed = !dzs || !xht || !dxh || !c || !tc || !zero || !order || !panel;
    failed |= p->bf16 && (!dz2 || !xht2 || !dzs2);
    for (int s = T - 1, done = 0; s >= 0 && !failed; s--, done++) {
        size_t row = (size_t)(p->reverse ? T - 1 - s : s) * B + lo;
        int n = rows_to_compute(p->mask ? p->mask + row : NULL, rows, order);
        float *dz = dzs + (size_t)filled * Gp, *xht_s = xht + filled;
        for (int q = 0; q < n; q++) { /* skipped rows: dz 0, dh and dc pass unchanged */
            int r = order[q];
            float *dzr = dz + (size_t)q * Gp, *dhr = dh + (size_t)r * H, *dcr = dc + (size_t)r * H;
            ISA(backward_row)(p, row + r, dzr, dhr, dcr, c, tc, zero);
            for (int j = 0; j < G; j++) dbias[j] += dzr[j];
            ISA(gather_xht)(p, row + r, lo + r, xht_s + q, block);
        }
        /* [dx_t, dh_prev] = dz.[w; u]^T */
        ISA(product)(p->bf16, n, G, Kp, dz, Gp, dz2, p->wut, 1, zero, 0, dxh, Kp, NULL);
        filled += n;
        if (done % SUM_STEPS == SUM_STEPS - 1 || s == 0) { /* [dw; du] += the last steps' */
            if (p->bf16) pack_cols(filled, Gp, dzs, Gp, dzs2);
            const void *m = p->bf16 ? (const void *)dzs2 : dzs;
            ISA(product)(p->bf16, K, filled, Gp, xht, block, xht2, m, 0, sum, Gp, sum, Gp, panel);
            filled = 0;
        }
        for (int q = 0; q < rows; q++) {
            int r = order[q];
            if (q >= n) /* skipped: dx 0 */
                memset(p->dx + (row + r) * F, 0, F * sizeof(float));
            else
                ISA(scatter_row)(p, row + r, lo + r, dxh + (size_t)q * Kp, dh + (size_t)r * H);
        }
    }
    void *scratch[] = {dzs, dxh, order, panel, xht, zero, dz2, xht2, dzs2, c, tc};
    for (size_t k = 0; k < sizeof scratch / sizeof *scratch; k++) free(scratch[k]);
    return failed ? -1 : 0;
}

#undef VECTOR
#undef VLOAD
#undef VSTORE
