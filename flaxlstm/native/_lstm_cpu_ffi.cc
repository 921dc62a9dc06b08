// XLA FFI handlers for the C loop in _lstm_cpu.c: XLA hands them its own buffers, so the loop
// reads its inputs and writes its outputs in place (flaxlstm/native/__init__.py registers them).
#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" {
typedef void (*Spawn)(void *pool, void (*task)(void *), void *arg);
const char *lstm_error(int error);
int lstm_forward(int isa, Spawn spawn, void *pool, int threads, int T, int B, int H, int F,
                 int reverse, int save, int bf16, const float *x, const float *w, const float *u,
                 const float *bias, const float *c0, const float *h0, const float *mask,
                 const float *rmask, float *a, float *c_prev, float *h_prev, float *out,
                 float *c_n, float *h_n);
int lstm_backward(int isa, Spawn spawn, void *pool, int threads, int T, int B, int H, int F,
                  int reverse, int bf16, const float *a, const float *c_prev, const float *h_prev,
                  const float *x, const float *w, const float *u, const float *dh_n,
                  const float *dc_n, const float *d_out, const float *mask, const float *rmask,
                  float *dx, float *dw, float *du, float *dbias, float *dh0, float *dc0,
                  float *d_rmask);

// The jaxlib whose FFI header this library was compiled with (setup.py; flaxlstm.native says it
// when this jaxlib refuses the handlers).
const char *lstm_jaxlib(void) { return FLAXLSTM_JAXLIB; }
}

// The loop's helpers run on XLA's own thread pool (see in_parts in _lstm_cpu.c).
static void Schedule(void *pool, void (*task)(void *), void *arg) {
  static_cast<ffi::ThreadPool *>(pool)->Schedule([task, arg] { task(arg); });
}

// The loop's error (lstm_error), as XLA's: one Python exception with its message.
static ffi::Error Result(int error) {
  if (error == 0) return ffi::Error::Success();
  auto code = error == 1 ? ffi::ErrorCode::kResourceExhausted  // LSTM_OUT_OF_MEMORY
                         : ffi::ErrorCode::kInvalidArgument;   // LSTM_BAD_ISA
  return ffi::Error(code, std::string(lstm_error(error)));
}

using In = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

// x [T, B, F], w [F, 4H], u [H, 4H], bias [4H], c0, h0 [B, H], mask [T, B] (read when
// has_mask), rmask [B, H] (read when has_rmask); a, c_prev and h_prev are written when save
// (else they are empty), out when it is not empty. bf16: the products on bfloat16 operands
// (on ISA_BF16 only). isa: the instruction set to run (_lstm_cpu.c's ISA_*).
static ffi::Error Forward(ffi::ThreadPool pool, In x, In w, In u, In bias, In c0, In h0,
                          In mask, In rmask, Out a, Out c_prev, Out h_prev, Out out, Out c_n,
                          Out h_n, int32_t reverse, int32_t has_mask, int32_t has_rmask,
                          int32_t bf16, int32_t isa, int32_t threads) {
  auto d = x.dimensions();
  int save = a->element_count() > 0;
  return Result(lstm_forward(isa, Schedule, &pool, threads, d[0], d[1], u.dimensions()[0], d[2],
               reverse, save, bf16,
               x.typed_data(), w.typed_data(), u.typed_data(), bias.typed_data(), c0.typed_data(),
               h0.typed_data(), has_mask ? mask.typed_data() : nullptr,
               has_rmask ? rmask.typed_data() : nullptr, a->typed_data(),
               c_prev->typed_data(), h_prev->typed_data(),
               out->element_count() ? out->typed_data() : nullptr, c_n->typed_data(),
               h_n->typed_data()));
}

// a [T, B, 4H], c_prev, h_prev [T, B, H], x [T, B, F], w [F, 4H], u [H, 4H], dh_n, dc_n [B, H],
// d_out [T, B, H] (empty: zero), mask [T, B] (read when has_mask), rmask [B, H] and its
// gradient d_rmask (read and written when has_rmask; else empty); bf16 and isa as the
// forward's.
static ffi::Error Backward(ffi::ThreadPool pool, In a, In c_prev, In h_prev, In x, In w, In u,
                           In dh_n, In dc_n, In d_out, In mask, In rmask, Out dx, Out dw, Out du,
                           Out dbias, Out dh0, Out dc0, Out d_rmask, int32_t reverse,
                           int32_t has_mask, int32_t has_rmask, int32_t bf16, int32_t isa,
                           int32_t threads) {
  auto d = x.dimensions();
  return Result(lstm_backward(isa, Schedule, &pool, threads, d[0], d[1], u.dimensions()[0], d[2],
                reverse, bf16,
                a.typed_data(), c_prev.typed_data(), h_prev.typed_data(), x.typed_data(),
                w.typed_data(), u.typed_data(), dh_n.typed_data(), dc_n.typed_data(),
                d_out.element_count() ? d_out.typed_data() : nullptr,
                has_mask ? mask.typed_data() : nullptr, has_rmask ? rmask.typed_data() : nullptr,
                dx->typed_data(), dw->typed_data(), du->typed_data(), dbias->typed_data(),
                dh0->typed_data(), dc0->typed_data(), d_rmask->typed_data()));
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>()
                                  .Arg<In>().Arg<In>()
                                  .Ret<In>().Ret<In>().Ret<In>().Ret<In>().Ret<In>().Ret<In>()
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("has_mask")
                                  .Attr<int32_t>("has_rmask")
                                  .Attr<int32_t>("bf16")
                                  .Attr<int32_t>("isa")
                                  .Attr<int32_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>()
                                  .Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>()
                                  .Ret<In>().Ret<In>().Ret<In>().Ret<In>().Ret<In>().Ret<In>()
                                  .Ret<In>()
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("has_mask")
                                  .Attr<int32_t>("has_rmask")
                                  .Attr<int32_t>("bf16")
                                  .Attr<int32_t>("isa")
                                  .Attr<int32_t>("threads"));
