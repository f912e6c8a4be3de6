// Shape checks shared by the CPU and CUDA host handlers: both targets accept
// the same operands and report the same errors.
//
//   approxjax_gemm:     lhs[..., M, K] (or [..., K, M] with transpose_lhs),
//                       rhs[..., K, N] (or [..., N, K] with transpose_rhs),
//                       lut[..., 2**m, 2**m] -> out[..., M, N]
//   approxjax_multiply: a[..., n], b[..., n], lut[..., 2**m, 2**m] -> out[..., n]
//   approxjax_conv_gemm (CPU): see CheckConvGemm.
//
// The leading dimensions broadcast numpy-style (each is 1 or the output's).
#ifndef APPROXJAX_SHAPES_H_
#define APPROXJAX_SHAPES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "approx_multiply.h"
#include "xla/ffi/api/ffi.h"

namespace approxjax {

namespace ffi = xla::ffi;

inline std::string DimsString(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + (dims.size() == 1 ? ",)" : ")");
}

// A batch of matrices laid out [lead..., rows, cols] with broadcasting.
struct Operand {
  std::vector<int64_t> lead_stride;  // per leading dim (in matrices), 0 where broadcast
  int64_t matrix_count = 0;          // product of its leading dims
};

// Leading-dimension strides of one operand against the output's leading dims.
inline ffi::Error LeadStrides(const char* target, const char* name,
                              ffi::Span<const int64_t> dims,
                              const std::vector<int64_t>& out_lead,
                              Operand* op) {
  const size_t lead = out_lead.size();
  op->lead_stride.assign(lead, 0);
  int64_t stride = 1;
  for (int d = static_cast<int>(lead) - 1; d >= 0; --d) {
    const int64_t size = dims[d];
    if (size != 1 && size != out_lead[d]) {
      return ffi::Error::InvalidArgument(
          std::string(target) + ": " + name + " shape " + DimsString(dims) +
          " does not broadcast to the output's batch");
    }
    op->lead_stride[d] = size == 1 ? 0 : stride;
    stride *= size;
  }
  op->matrix_count = stride;
  return ffi::Error::Success();
}

// Matrix offset of batch element g in one broadcast operand.
inline int64_t MatrixOffset(int64_t g, const std::vector<int64_t>& lead,
                            const Operand& x) {
  int64_t at = 0;
  for (int d = static_cast<int>(lead.size()) - 1; d >= 0; --d) {
    at += (g % lead[d]) * x.lead_stride[d];
    g /= lead[d];
  }
  return at;
}

// Matrix offsets of batch element g in three broadcast operands.
inline void BatchOffsets(int64_t g, const std::vector<int64_t>& lead,
                         const Operand& x, const Operand& y, const Operand& z,
                         int64_t* ox, int64_t* oy, int64_t* oz) {
  *ox = MatrixOffset(g, lead, x);
  *oy = MatrixOffset(g, lead, y);
  *oz = MatrixOffset(g, lead, z);
}

// Mantissa bits of a table whose last two dimensions are (side, side).
inline ffi::Error TableBits(const char* target, ffi::Span<const int64_t> lud,
                            int* m) {
  const size_t r = lud.size();
  const int64_t side = lud[r - 1];
  int bits = 0;
  while (bits <= kMaxMantissaBits && (int64_t{1} << bits) < side) ++bits;
  if (lud[r - 2] != side || (int64_t{1} << bits) != side ||
      bits > kMaxMantissaBits) {
    return ffi::Error::InvalidArgument(
        std::string(target) +
        ": lut must be (2**m, 2**m) with 0 <= m <= 12; got " + DimsString(lud));
  }
  *m = bits;
  return ffi::Error::Success();
}

// A checked batched GEMM (or elementwise multiply, with m_rows = 1, depth = 1).
struct BatchShape {
  int64_t m_rows = 0, n_cols = 0, depth = 0;  // M, N, K (n for multiply)
  int m = 0;                                  // mantissa bits
  std::vector<int64_t> out_lead;
  int64_t batch = 1;  // product of out_lead
  Operand a, b, l;
};

// The output's leading dimensions (all but its last `core`) and the
// operands' strides against them: a and b, and the table where given (the
// tail of every shape check below).
inline ffi::Error BatchOperands(const char* target, ffi::Span<const int64_t> od,
                                size_t core, const char* a_name,
                                ffi::Span<const int64_t> ad, const char* b_name,
                                ffi::Span<const int64_t> bd,
                                const ffi::Span<const int64_t>* lud, BatchShape* s) {
  s->out_lead.assign(od.begin(), od.end() - core);
  s->batch = 1;
  for (int64_t d : s->out_lead) s->batch *= d;
  if (auto e = LeadStrides(target, a_name, ad, s->out_lead, &s->a); e.failure()) {
    return e;
  }
  if (auto e = LeadStrides(target, b_name, bd, s->out_lead, &s->b); e.failure()) {
    return e;
  }
  return lud ? LeadStrides(target, "lut", *lud, s->out_lead, &s->l) : ffi::Error::Success();
}

inline ffi::Error CheckGemm(ffi::Span<const int64_t> ld,
                            ffi::Span<const int64_t> rd,
                            ffi::Span<const int64_t> lud,
                            ffi::Span<const int64_t> od, bool transpose_lhs,
                            bool transpose_rhs, BatchShape* s) {
  const char* target = "approxjax_gemm";
  const size_t rank = od.size();
  if (rank < 2 || ld.size() != rank || rd.size() != rank ||
      lud.size() != rank) {
    return ffi::Error::InvalidArgument(
        "approxjax_gemm: lhs, rhs, lut and out must have one rank >= 2; got " +
        DimsString(ld) + ", " + DimsString(rd) + ", " + DimsString(lud) +
        ", " + DimsString(od));
  }
  s->m_rows = transpose_lhs ? ld[rank - 1] : ld[rank - 2];
  s->depth = transpose_lhs ? ld[rank - 2] : ld[rank - 1];
  const int64_t k2 = transpose_rhs ? rd[rank - 1] : rd[rank - 2];
  s->n_cols = transpose_rhs ? rd[rank - 2] : rd[rank - 1];
  if (k2 != s->depth || od[rank - 2] != s->m_rows ||
      od[rank - 1] != s->n_cols) {
    return ffi::Error::InvalidArgument(
        "approxjax_gemm: inconsistent shapes lhs " + DimsString(ld) +
        ", rhs " + DimsString(rd) + ", out " + DimsString(od));
  }
  if (auto e = TableBits(target, lud, &s->m); e.failure()) return e;
  return BatchOperands(target, od, 2, "lhs", ld, "rhs", rd, &lud, s);
}

// A checked batched GEMM of integer operand codes: out [..., M, N] from lhs
// [..., M, K] and rhs [..., K, N] and, where `td` is given, a table lut
// [..., A, B] (its sides are the caller's to check), all of one rank >= 2,
// each leading dimension out's or 1.
inline ffi::Error CheckIntGemm(const char* target, ffi::Span<const int64_t> ld,
                               ffi::Span<const int64_t> rd,
                               const ffi::Span<const int64_t>* td,
                               ffi::Span<const int64_t> od, BatchShape* s) {
  const size_t rank = ld.size();
  if (rank < 2 || rd.size() != rank || od.size() != rank ||
      (td != nullptr && td->size() != rank)) {
    return ffi::Error::InvalidArgument(
        std::string(target) + (td ? ": lhs, rhs, lut" : ": lhs, rhs") +
        " and out must have one rank >= 2; got " + DimsString(ld) + ", " +
        DimsString(rd) + ", " + (td ? DimsString(*td) + ", " : "") + DimsString(od));
  }
  s->m_rows = ld[rank - 2];
  s->depth = ld[rank - 1];
  s->n_cols = rd[rank - 1];
  if (rd[rank - 2] != s->depth || od[rank - 2] != s->m_rows ||
      od[rank - 1] != s->n_cols) {
    return ffi::Error::InvalidArgument(
        std::string(target) + ": shapes do not chain: lhs " + DimsString(ld) +
        ", rhs " + DimsString(rd) + ", out " + DimsString(od));
  }
  return BatchOperands(target, od, 2, "lhs", ld, "rhs", rd, td, s);
}

inline ffi::Error CheckMultiply(ffi::Span<const int64_t> ad,
                                ffi::Span<const int64_t> bd,
                                ffi::Span<const int64_t> lud,
                                ffi::Span<const int64_t> od, BatchShape* s) {
  const char* target = "approxjax_multiply";
  const size_t rank = od.size();
  if (rank < 1 || ad.size() != rank || bd.size() != rank ||
      lud.size() != rank + 1) {
    return ffi::Error::InvalidArgument(
        "approxjax_multiply: a, b, out must have one rank >= 1 and lut one "
        "more; got " +
        DimsString(ad) + ", " + DimsString(bd) + ", " + DimsString(lud) +
        ", " + DimsString(od));
  }
  const int64_t n = od[rank - 1];
  if (ad[rank - 1] != n || bd[rank - 1] != n) {
    return ffi::Error::InvalidArgument(
        "approxjax_multiply: inconsistent shapes a " + DimsString(ad) +
        ", b " + DimsString(bd) + ", lut " + DimsString(lud) + ", out " +
        DimsString(od));
  }
  if (auto e = TableBits(target, lud, &s->m); e.failure()) return e;
  s->m_rows = 1;
  s->depth = 1;
  s->n_cols = n;
  return BatchOperands(target, od, 1, "a", ad, "b", bd, &lud, s);
}

// An implicit-im2col GEMM (approxjax_conv_gemm): the lhs is the patches of a
// padded input x[..., N, S_1..S_n, C] (window corner at o_d * stride_d,
// taps t_d * dilation_d apart), one row per output pixel and K =
// prod(kernel) * C columns ordered tap-major, channel-minor:
//   forward:             rhs[..., K, O]    -> out[..., N, P, O]
//   transpose_lhs (the weight gradient, patches^T @ g):
//                        rhs[..., N, P, O] -> out[..., K, O]
// with P output pixels.
struct ConvShape {
  BatchShape gemm;  // M, K, N of the GEMM; operand a counts whole inputs
  bool transposed = false;
  int64_t images = 0, channels = 0, pixels = 0;
  int64_t image = 0;  // elements of one padded image: prod(S) * C
  std::vector<int64_t> out_dims;  // output spatial dims
  std::vector<int64_t> row_step;  // per spatial dim: stride * pitch
  std::vector<int64_t> tap_off;   // per tap: offset of its element (0, 0...)
};

inline ffi::Error CheckConvGemm(ffi::Span<const int64_t> xd,
                                ffi::Span<const int64_t> wd,
                                ffi::Span<const int64_t> lud,
                                ffi::Span<const int64_t> od,
                                ffi::Span<const int64_t> kernel,
                                ffi::Span<const int64_t> strides,
                                ffi::Span<const int64_t> dilation,
                                bool transposed, ConvShape* s) {
  const char* target = "approxjax_conv_gemm";
  const size_t n = kernel.size();
  const size_t rank = od.size();  // lead + 3 (lead + 2 when transposed)
  const size_t out_core = transposed ? 2 : 3, rhs_core = transposed ? 3 : 2;
  auto bad = [&](const std::string& why) {
    return ffi::Error::InvalidArgument(
        std::string(target) + ": " + why + "; got x " + DimsString(xd) +
        ", rhs " + DimsString(wd) + ", lut " + DimsString(lud) + ", out " +
        DimsString(od) + ", kernel " + DimsString(kernel) + ", strides " +
        DimsString(strides) + ", dilation " + DimsString(dilation));
  };
  if (n < 1 || strides.size() != n || dilation.size() != n ||
      rank < out_core || xd.size() != rank - out_core + n + 2 ||
      wd.size() != rank - out_core + rhs_core ||
      lud.size() != rank - out_core + 2) {
    return bad("ranks must be lead + n + 2 (x), lead + 2 (lut) and lead + 3 "
               "(out, or rhs when transposed) with n = len(kernel) = "
               "len(strides) = len(dilation) >= 1");
  }
  const size_t lead = rank - out_core;
  s->transposed = transposed;
  const int64_t batch = xd[lead], channels = xd[xd.size() - 1];
  int64_t taps = 1, pixels = 1, pitch = channels;
  s->out_dims.assign(n, 0);
  s->row_step.assign(n, 0);
  std::vector<int64_t> tap_step(n);
  for (int d = static_cast<int>(n) - 1; d >= 0; --d) {
    const int64_t size = xd[lead + 1 + d];
    if (kernel[d] < 1 || strides[d] < 1 || dilation[d] < 1) {
      return bad("kernel, strides and dilation must be positive");
    }
    const int64_t span = (kernel[d] - 1) * dilation[d] + 1;
    if (size < span) return bad("every window must fit the padded input");
    s->out_dims[d] = (size - span) / strides[d] + 1;
    s->row_step[d] = strides[d] * pitch;
    tap_step[d] = dilation[d] * pitch;
    pixels *= s->out_dims[d];
    taps *= kernel[d];
    pitch *= size;
  }
  if (transposed ? wd[lead] != batch || wd[lead + 1] != pixels ||
                       od[lead] != taps * channels || od[lead + 1] != wd[lead + 2]
                 : od[lead] != batch || od[lead + 1] != pixels ||
                       wd[lead] != taps * channels || od[lead + 2] != wd[lead + 1]) {
    return bad(transposed ? "inconsistent shapes: rhs must be (..., N, P, O) "
                            "and out (..., prod(kernel) * C, O)"
                          : "inconsistent shapes: out must be (..., N, P, O) "
                            "and rhs (..., prod(kernel) * C, O)");
  }
  s->images = batch;
  s->channels = channels;
  s->pixels = pixels;
  s->image = pitch;
  s->tap_off.assign(taps, 0);
  for (int64_t t = 0; t < taps; ++t) {
    int64_t rest = t, off = 0;
    for (int d = static_cast<int>(n) - 1; d >= 0; --d) {
      off += rest % kernel[d] * tap_step[d];
      rest /= kernel[d];
    }
    s->tap_off[t] = off;
  }
  BatchShape& g = s->gemm;
  g.m_rows = transposed ? taps * channels : batch * pixels;
  g.depth = transposed ? batch * pixels : taps * channels;
  g.n_cols = od[rank - 1];
  if (auto e = TableBits(target, lud, &g.m); e.failure()) return e;
  return BatchOperands(target, od, out_core, "x", xd, "rhs", wd, &lud, &g);
}

}  // namespace approxjax

#endif  // APPROXJAX_SHAPES_H_
