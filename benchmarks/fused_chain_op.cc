// SpinalDense's sequential chain as one TensorFlow op, and its gradient as
// another: an experiment for benchmarks/layer_bench.py --fused, not part of
// the package. At 320 -> 6 x 8 the layer's step is slower than Dense's
// although it does half the multiplications, because the chain is some
// thirty small operations forward and backward, each paying TensorFlow's
// per-operation cost. This measures what the layer would gain if that chain
// were one operation each way.
//
// SpinalChain(products[N], bias, recurrent) -> y, with ReLU:
//   sub-layer i reads columns [(i / N) * width, (i / N + 1) * width) of
//   products[i % N] (the input part i % N times its kernel, as the layer
//   shares one product per part), adds bias[i], and from i = 1 on the
//   previous sub-layer's output times recurrent rows [(i - 1) * width,
//   i * width); y is the sub-layers' outputs side by side.
// SpinalChainGrad(dy, y, recurrent) -> (d products[N], d bias, d recurrent).

#include <algorithm>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::OpOutputList;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
namespace shape_inference = ::tensorflow::shape_inference;

// Sub-layers that read part s of n: s, s + n, s + 2n, ... below depth.
int64_t Count(int depth, int n, int s) { return (depth - s + n - 1) / n; }

absl::Status ReadAttrs(shape_inference::InferenceContext* c, int* n, int* depth,
                       int* width) {
  TF_RETURN_IF_ERROR(c->GetAttr("N", n));
  TF_RETURN_IF_ERROR(c->GetAttr("depth", depth));
  return c->GetAttr("width", width);
}

// Runs fn(begin, end) over rows [0, rows): inline when the work is small,
// since handing it to TensorFlow's intra-op threads costs more than it saves
// at the paper's MNIST size.
template <typename Fn>
void ForRows(OpKernelContext* ctx, int64_t rows, int64_t cost_per_row, Fn fn) {
  if (rows * cost_per_row < (int64_t{1} << 20)) {
    fn(0, rows);
    return;
  }
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, rows, cost_per_row,
                      fn);
}

// The per-row work. Rows go kTile at a time: each row's chain is a sequence
// of dependent multiply-adds, and interleaving independent rows keeps the
// processor's pipelines full. At width 8 (the paper's MNIST head) a full
// tile is written with AVX2 intrinsics, one 8-float register per row; the
// plain loops below were about five times slower there in a one-off timing
// outside TensorFlow (not kept), as the compiler keeps their accumulators in
// memory.
constexpr int kTile = 8;

void ForwardTile(int64_t row0, int tiles, int d, int w, const float* const* src,
                 const int64_t* stride, const float* __restrict b,
                 const float* __restrict r, float* __restrict y) {
  std::vector<float> acc(tiles * w);
  for (int i = 0; i < d; ++i) {
    for (int t = 0; t < tiles; ++t) {
      const float* p = src[i] + (row0 + t) * stride[i];
      for (int j = 0; j < w; ++j) acc[t * w + j] = p[j] + b[i * w + j];
    }
    if (i > 0) {
      const float* block = r + (i - 1) * w * w;
      for (int k = 0; k < w; ++k)
        for (int t = 0; t < tiles; ++t) {
          const float pk = y[(row0 + t) * d * w + (i - 1) * w + k];
          for (int j = 0; j < w; ++j) acc[t * w + j] += pk * block[k * w + j];
        }
    }
    for (int t = 0; t < tiles; ++t)
      for (int j = 0; j < w; ++j)
        y[(row0 + t) * d * w + i * w + j] = std::max(acc[t * w + j], 0.0f);
  }
}

// rt holds each recurrent block transposed: the carry into the previous
// sub-layer is delta times the block's transpose.
void BackwardTile(int64_t row0, int tiles, int d, int w, float* const* dsrc,
                  const int64_t* stride, const float* __restrict dy,
                  const float* __restrict y, const float* __restrict rt) {
  std::vector<float> carry(tiles * w, 0.0f);
  for (int i = d - 1; i >= 0; --i) {
    for (int t = 0; t < tiles; ++t) {
      const int64_t at = (row0 + t) * d * w + i * w;
      float* delta = dsrc[i] + (row0 + t) * stride[i];
      for (int j = 0; j < w; ++j)
        delta[j] = y[at + j] > 0.0f ? dy[at + j] + carry[t * w + j] : 0.0f;
    }
    if (i == 0) break;
    std::fill(carry.begin(), carry.end(), 0.0f);
    const float* block = rt + (i - 1) * w * w;
    for (int j = 0; j < w; ++j)
      for (int t = 0; t < tiles; ++t) {
        const float dj = dsrc[i][(row0 + t) * stride[i] + j];
        for (int k = 0; k < w; ++k) carry[t * w + k] += dj * block[j * w + k];
      }
  }
}

#ifdef __AVX2__
void ForwardTile8(int64_t row0, int d, const float* const* src, const int64_t* stride,
                  const float* __restrict b, const float* __restrict r,
                  float* __restrict y) {
  __m256 acc[kTile];
  alignas(32) float h[kTile * 8];  // the previous sub-layer's outputs
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < d; ++i) {
    const __m256 bi = _mm256_loadu_ps(b + i * 8);
    for (int t = 0; t < kTile; ++t)
      acc[t] = _mm256_add_ps(_mm256_loadu_ps(src[i] + (row0 + t) * stride[i]), bi);
    if (i > 0) {
      const float* block = r + (i - 1) * 64;
      for (int k = 0; k < 8; ++k) {
        const __m256 rk = _mm256_loadu_ps(block + k * 8);
        for (int t = 0; t < kTile; ++t)
          acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(h + t * 8 + k), rk, acc[t]);
      }
    }
    for (int t = 0; t < kTile; ++t) {
      const __m256 out = _mm256_max_ps(acc[t], zero);
      _mm256_store_ps(h + t * 8, out);
      _mm256_storeu_ps(y + (row0 + t) * d * 8 + i * 8, out);
    }
  }
}

void BackwardTile8(int64_t row0, int d, float* const* dsrc, const int64_t* stride,
                   const float* __restrict dy, const float* __restrict y,
                   const float* __restrict rt) {
  __m256 carry[kTile];
  alignas(32) float delta[kTile * 8];
  const __m256 zero = _mm256_setzero_ps();
  for (int t = 0; t < kTile; ++t) carry[t] = zero;
  for (int i = d - 1; i >= 0; --i) {
    for (int t = 0; t < kTile; ++t) {
      const int64_t at = (row0 + t) * d * 8 + i * 8;
      const __m256 live = _mm256_cmp_ps(_mm256_loadu_ps(y + at), zero, _CMP_GT_OQ);
      const __m256 g = _mm256_and_ps(live, _mm256_add_ps(_mm256_loadu_ps(dy + at), carry[t]));
      _mm256_store_ps(delta + t * 8, g);
      _mm256_storeu_ps(dsrc[i] + (row0 + t) * stride[i], g);
    }
    if (i == 0) break;
    const float* block = rt + (i - 1) * 64;
    for (int t = 0; t < kTile; ++t) carry[t] = zero;
    for (int j = 0; j < 8; ++j) {
      const __m256 rj = _mm256_loadu_ps(block + j * 8);
      for (int t = 0; t < kTile; ++t)
        carry[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(delta + t * 8 + j), rj, carry[t]);
    }
  }
}
#endif

// Runs the rows [begin, end) a tile at a time: where the build has AVX2, full
// tiles at width 8 through `eight(row0)`; the rest through `any(row0, rows)`.
template <typename Eight, typename Any>
void ByTiles(int64_t begin, int64_t end, int w, Eight eight, Any any) {
  int64_t row0 = begin;
#ifdef __AVX2__
  if (w == 8)
    for (; row0 + kTile <= end; row0 += kTile) eight(row0);
#endif
  for (; row0 < end; row0 += kTile)
    any(row0, static_cast<int>(std::min<int64_t>(kTile, end - row0)));
}

// Sums over rows: the bias's gradient and each recurrent block's (previous
// output transposed times this sub-layer's deltas), into local blocks.
void Reduce(int64_t rows, int d, int w, float* const* dsrc, const int64_t* stride,
            const float* __restrict y, float* __restrict dbias, float* __restrict drec) {
  std::vector<float> block(w * w), db(w);
  for (int i = 0; i < d; ++i) {
    std::fill(block.begin(), block.end(), 0.0f);
    std::fill(db.begin(), db.end(), 0.0f);
    int64_t row = 0;
#ifdef __AVX2__
    if (w == 8) {
      __m256 vb = _mm256_setzero_ps(), vk[8];
      for (int k = 0; k < 8; ++k) vk[k] = _mm256_setzero_ps();
      for (; row < rows; ++row) {
        const __m256 delta = _mm256_loadu_ps(dsrc[i] + row * stride[i]);
        vb = _mm256_add_ps(vb, delta);
        if (i > 0) {
          const float* prev = y + row * d * 8 + (i - 1) * 8;
          for (int k = 0; k < 8; ++k)
            vk[k] = _mm256_fmadd_ps(_mm256_broadcast_ss(prev + k), delta, vk[k]);
        }
      }
      _mm256_storeu_ps(db.data(), vb);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(block.data() + k * 8, vk[k]);
    }
#endif
    for (; row < rows; ++row) {
      const float* delta = dsrc[i] + row * stride[i];
      for (int j = 0; j < w; ++j) db[j] += delta[j];
      if (i > 0) {
        const float* prev = y + row * d * w + (i - 1) * w;
        for (int k = 0; k < w; ++k)
          for (int j = 0; j < w; ++j) block[k * w + j] += prev[k] * delta[j];
      }
    }
    std::copy(db.begin(), db.end(), dbias + i * w);
    if (i > 0) std::copy(block.begin(), block.end(), drec + (i - 1) * w * w);
  }
}

class ChainBase : public OpKernel {
 public:
  explicit ChainBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("depth", &depth_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("width", &width_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES(ctx, depth_ >= 2,
                InvalidArgument("depth must be at least 2, got ", depth_));
    OP_REQUIRES(ctx, n_ <= depth_,
                InvalidArgument("N must be at most depth, got N=", n_));
  }

 protected:
  void CheckRecurrent(OpKernelContext* ctx, const Tensor& recurrent) {
    OP_REQUIRES(ctx,
                recurrent.dims() == 2 &&
                    recurrent.dim_size(0) == (depth_ - 1) * width_ &&
                    recurrent.dim_size(1) == width_,
                InvalidArgument("recurrent must be ((depth - 1) * width, width), got ",
                                recurrent.shape().DebugString()));
  }

  // Columns of part s: the sub-layers that read it, `width` each.
  int64_t Cols(int s) const { return Count(depth_, n_, s) * width_; }

  // Where each sub-layer's columns start among `parts` (the products or
  // their gradients) and the row stride there, worked out once: divisions
  // in the row loops cost more than the arithmetic.
  template <typename T>
  void SubLayers(const std::vector<T*>& parts, std::vector<T*>* start,
                 std::vector<int64_t>* stride) const {
    start->resize(depth_);
    stride->resize(depth_);
    for (int i = 0; i < depth_; ++i) {
      (*start)[i] = parts[i % n_] + (i / n_) * width_;
      (*stride)[i] = Cols(i % n_);
    }
  }

  int depth_, width_, n_;
};

class SpinalChainOp : public ChainBase {
 public:
  using ChainBase::ChainBase;

  void Compute(OpKernelContext* ctx) override {
    OpInputList products;
    OP_REQUIRES_OK(ctx, ctx->input_list("products", &products));
    const Tensor& bias = ctx->input(n_);
    const Tensor& recurrent = ctx->input(n_ + 1);
    CheckRecurrent(ctx, recurrent);
    if (!ctx->status().ok()) return;
    const int64_t rows = products[0].dim_size(0);
    const int d = depth_, w = width_, n = n_;
    OP_REQUIRES(ctx, bias.NumElements() == d * w,
                InvalidArgument("bias must have depth * width elements"));
    std::vector<const float*> part(n);
    for (int s = 0; s < n; ++s) {
      OP_REQUIRES(ctx,
                  products[s].dims() == 2 && products[s].dim_size(0) == rows &&
                      products[s].dim_size(1) == Cols(s),
                  InvalidArgument("products[", s, "] must be (batch, ", Cols(s),
                                  "), got ", products[s].shape().DebugString()));
      part[s] = products[s].flat<float>().data();
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, d * w}), &out));
    const float* b = bias.flat<float>().data();
    const float* r = recurrent.flat<float>().data();
    float* y = out->flat<float>().data();
    std::vector<const float*> src;
    std::vector<int64_t> stride;
    SubLayers(part, &src, &stride);
    ForRows(ctx, rows, 2 * d * w * w, [&](int64_t begin, int64_t end) {
      ByTiles(
          begin, end, w,
          [&](int64_t row0) {
#ifdef __AVX2__
            ForwardTile8(row0, d, src.data(), stride.data(), b, r, y);
#endif
          },
          [&](int64_t row0, int tiles) {
            ForwardTile(row0, tiles, d, w, src.data(), stride.data(), b, r, y);
          });
    });
  }
};

class SpinalChainGradOp : public ChainBase {
 public:
  using ChainBase::ChainBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy_t = ctx->input(0);
    const Tensor& y_t = ctx->input(1);
    const Tensor& recurrent = ctx->input(2);
    CheckRecurrent(ctx, recurrent);
    if (!ctx->status().ok()) return;
    const int d = depth_, w = width_, n = n_;
    OP_REQUIRES(ctx,
                y_t.dims() == 2 && y_t.dim_size(1) == d * w && dy_t.shape() == y_t.shape(),
                InvalidArgument("dy and y must both be (batch, depth * width)"));
    const int64_t rows = y_t.dim_size(0);
    OpOutputList dparts;
    OP_REQUIRES_OK(ctx, ctx->output_list("grad_products", &dparts));
    std::vector<float*> dpart(n);
    for (int s = 0; s < n; ++s) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, dparts.allocate(s, TensorShape({rows, Cols(s)}), &t));
      dpart[s] = t->flat<float>().data();
    }
    Tensor* dbias_t = nullptr;
    Tensor* drec_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output("grad_bias", TensorShape({d * w}), &dbias_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output("grad_recurrent", recurrent.shape(), &drec_t));
    const float* dy = dy_t.flat<float>().data();
    const float* y = y_t.flat<float>().data();
    const float* r = recurrent.flat<float>().data();
    std::vector<float*> dsrc;
    std::vector<int64_t> stride;
    SubLayers(dpart, &dsrc, &stride);

    std::vector<float> rt((d - 1) * w * w);
    for (int i = 0; i < d - 1; ++i)
      for (int k = 0; k < w; ++k)
        for (int j = 0; j < w; ++j) rt[i * w * w + j * w + k] = r[i * w * w + k * w + j];
    // Rows are independent going backwards through the chain: each row's
    // pre-activation gradients, written where the products' gradients go.
    ForRows(ctx, rows, 3 * d * w * w, [&](int64_t begin, int64_t end) {
      ByTiles(
          begin, end, w,
          [&](int64_t row0) {
#ifdef __AVX2__
            BackwardTile8(row0, d, dsrc.data(), stride.data(), dy, y, rt.data());
#endif
          },
          [&](int64_t row0, int tiles) {
            BackwardTile(row0, tiles, d, w, dsrc.data(), stride.data(), dy, y, rt.data());
          });
    });
    float* dbias = dbias_t->flat<float>().data();
    float* drec = drec_t->flat<float>().data();
    Reduce(rows, d, w, dsrc.data(), stride.data(), y, dbias, drec);
  }
};

}  // namespace

REGISTER_OP("SpinalChain")
    .Input("products: N * float")
    .Input("bias: float")
    .Input("recurrent: float")
    .Output("y: float")
    .Attr("N: int >= 1")
    .Attr("depth: int >= 2")
    .Attr("width: int >= 1")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int n, depth, width;
      TF_RETURN_IF_ERROR(ReadAttrs(c, &n, &depth, &width));
      c->set_output(0, c->Matrix(c->Dim(c->input(0), 0), depth * width));
      return absl::OkStatus();
    });

REGISTER_OP("SpinalChainGrad")
    .Input("dy: float")
    .Input("y: float")
    .Input("recurrent: float")
    .Output("grad_products: N * float")
    .Output("grad_bias: float")
    .Output("grad_recurrent: float")
    .Attr("N: int >= 1")
    .Attr("depth: int >= 2")
    .Attr("width: int >= 1")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int n, depth, width;
      TF_RETURN_IF_ERROR(ReadAttrs(c, &n, &depth, &width));
      auto rows = c->Dim(c->input(1), 0);
      for (int s = 0; s < n; ++s) c->set_output(s, c->Matrix(rows, Count(depth, n, s) * width));
      c->set_output(n, c->Vector(depth * width));
      c->set_output(n + 1, c->input(2));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("SpinalChain").Device(::tensorflow::DEVICE_CPU), SpinalChainOp);
REGISTER_KERNEL_BUILDER(Name("SpinalChainGrad").Device(::tensorflow::DEVICE_CPU),
                        SpinalChainGradOp);
