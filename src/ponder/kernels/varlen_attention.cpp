// Compiled CPU kernels of compacted execution (built by ponder/kernels/__init__.py on first
// use; registered as torch.ops.ponder_kernels.*):
//   varlen_attention  attention of unpadded per-sequence query lists (inference, float32)
//   write_kv          keys/values of some tokens into the per-head cache [2, B, H, L, hd]
//   copy_rows         dst[rows] = src along dim 0 (index_copy_ without its per-index overhead)
// Vectors are GCC/Clang vector extensions (v16 = 16 floats): the compiler maps them onto
// whatever the machine has (-march=native: AVX-512, AVX2 or SSE), no intrinsics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t vi16 __attribute__((vector_size(64)));

constexpr int QB = 4;         // queries per block (share every key/value load)
constexpr float MASKED = -1e30f;

inline v16 load16(const float* p) { v16 x; std::memcpy(&x, p, sizeof(x)); return x; }
inline void store16(float* p, v16 x) { std::memcpy(p, &x, sizeof(x)); }
inline v8 load8(const float* p) { v8 x; std::memcpy(&x, p, sizeof(x)); return x; }
inline void store8(float* p, v8 x) { std::memcpy(p, &x, sizeof(x)); }

// exp(x) for x <= 0: x = n·ln2 + r (|r| <= ln2/2), exp(r) by its Taylor polynomial of
// degree 7 (relative error < 2e-8), 2^n written into the exponent bits; exactly 0 below -87.
inline v16 exp_nonpos(v16 x) {
  const v16 lo = x < -87.0f ? x - x : x - x + 1.0f;   // 1 where x >= -87 (as float mask)
  x = x < -87.0f ? x - x - 87.0f : x;
  const v16 magic = x - x + 12582912.0f;            // 1.5·2^23: adding it rounds to an integer
  const v16 n = (x * 1.44269504088896341f + magic) - magic;
  const v16 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  v16 p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n * lo;
}

// One (sequence, head): queries rows q0..q1 of q (row stride D), keys either transposed into
// kt [hd, Lp] (many queries: 16 keys per vector operation) or, when kt is null (a few queries:
// transposing would cost more than it saves), read as rows of kb (stride ks); C = hd / 8.
template <int C>
void attend_head(const float* qp, float* yp, int64_t D, int64_t q0, int64_t q1,
                 const float* kt, const float* kb, int64_t ks, const float* bias, int64_t L,
                 int64_t Lp, const float* vb, int64_t vs, const int64_t* pos, float scale, float* S) {
  constexpr int hd = 8 * C;
  for (int64_t i0 = q0; i0 < q1; i0 += QB) {
    const int nq = static_cast<int>(std::min<int64_t>(QB, q1 - i0));
    float qs[QB][hd];
    for (int r = 0; r < QB; ++r) {
      const float* row = qp + (i0 + std::min(r, nq - 1)) * D;
      for (int d = 0; d < hd; ++d) qs[r][d] = row[d] * scale;
    }
    if (kt == nullptr) {
      // scores [QB, Lp] one key at a time: dot products of rows
      for (int64_t j = 0; j < L; ++j) {
        v8 kk[C];
        for (int c = 0; c < C; ++c) kk[c] = load8(kb + j * ks + 8 * c);
        for (int r = 0; r < QB; ++r) {
          v8 acc = load8(qs[r]) * kk[0];
          for (int c = 1; c < C; ++c) acc += load8(qs[r] + 8 * c) * kk[c];
          float dot = bias[j];
          for (int t = 0; t < 8; ++t) dot += acc[t];
          S[r * Lp + j] = dot;
        }
      }
      for (int r = 0; r < QB; ++r)
        for (int64_t j = L; j < Lp; ++j) S[r * Lp + j] = MASKED;
    }
    // scores [QB, Lp], 16 keys at a time
    for (int64_t j = 0; kt != nullptr && j < Lp; j += 16) {
      const v16 b = load16(bias + j);
      v16 acc[QB];
      for (int r = 0; r < QB; ++r) acc[r] = b;
      for (int d = 0; d < hd; ++d) {
        const v16 kk = load16(kt + d * Lp + j);
        for (int r = 0; r < QB; ++r) acc[r] += qs[r][d] * kk;
      }
      for (int r = 0; r < QB; ++r) store16(S + r * Lp + j, acc[r]);
    }
    int64_t n_keys = L;  // keys any of these queries sees (the padded ones to Lp are never read)
    if (pos != nullptr) {
      n_keys = 0;
      for (int r = 0; r < nq; ++r) {
        const int64_t p = pos[i0 + r];
        for (int64_t j = p + 1; j < Lp; ++j) S[r * Lp + j] = MASKED;
        n_keys = std::max(n_keys, p + 1);
      }
    }
    // softmax per query (the padded rows of a short block are computed and dropped)
    float inv[QB];
    for (int r = 0; r < QB; ++r) {
      float* s = S + r * Lp;
      v16 m = load16(s);
      for (int64_t j = 16; j < Lp; j += 16) { const v16 x = load16(s + j); m = x > m ? x : m; }
      float mx = m[0];
      for (int t = 1; t < 16; ++t) mx = std::max(mx, m[t]);
      v16 sum = m - m;
      for (int64_t j = 0; j < Lp; j += 16) {
        const v16 e = exp_nonpos(load16(s + j) - mx);
        store16(s + j, e);
        sum += e;
      }
      float total = 0.0f;
      for (int t = 0; t < 16; ++t) total += sum[t];
      inv[r] = 1.0f / total;
    }
    // out = P · V
    v8 acc[QB][C];
    for (int r = 0; r < QB; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = v8{} ;
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* vr = vb + j * vs;
      v8 vv[C];
      for (int c = 0; c < C; ++c) vv[c] = load8(vr + 8 * c);
      for (int r = 0; r < QB; ++r) {
        const float p = S[r * Lp + j];
        for (int c = 0; c < C; ++c) acc[r][c] += p * vv[c];
      }
    }
    for (int r = 0; r < nq; ++r) {
      float* out = yp + (i0 + r) * D;
      for (int c = 0; c < C; ++c) store8(out + 8 * c, acc[r][c] * inv[r]);
    }
  }
}

using HeadFn = void (*)(const float*, float*, int64_t, int64_t, int64_t, const float*, const float*,
                        int64_t, const float*, int64_t, int64_t, const float*, int64_t,
                        const int64_t*, float, float*);

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& starts, const at::Tensor& pos,
                            const c10::optional<at::Tensor>& key_mask, bool causal, double scale) {
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.scalar_type() == at::kFloat, "q: [T, H*hd] contiguous float32");
  TORCH_CHECK(k.dim() == 4 && v.dim() == 4 && k.stride(3) == 1 && v.stride(3) == 1, "k, v: [B, H, L, hd], hd contiguous");
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), hd = k.size(3), D = H * hd;
  TORCH_CHECK(k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && v.sizes() == k.sizes(),
              "k, v: float32 of the same shape");
  TORCH_CHECK(q.size(1) == D && starts.numel() == B + 1 && starts.scalar_type() == at::kLong, "shapes");
  TORCH_CHECK(!causal || (pos.scalar_type() == at::kLong && pos.numel() == q.size(0)),
              "pos: [T] long (causal)");
  TORCH_CHECK(!key_mask.has_value() || (key_mask->scalar_type() == at::kBool && key_mask->dim() == 2
              && key_mask->size(0) == B && key_mask->size(1) == L), "key_mask: [B, L] bool");
  HeadFn fn = nullptr;
  switch (hd) {
    case 8: fn = attend_head<1>; break;
    case 16: fn = attend_head<2>; break;
    case 32: fn = attend_head<4>; break;
    case 64: fn = attend_head<8>; break;
    default: TORCH_CHECK(false, "head_dim must be 8, 16, 32 or 64");
  }
  at::Tensor y = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const at::Tensor st_c = starts.contiguous();
  const int64_t* st = st_c.data_ptr<int64_t>();
  // every query belongs to exactly one sequence: offsets from 0 to T, never decreasing
  TORCH_CHECK(st[0] == 0 && st[B] == q.size(0), "starts: offsets from 0 to T");
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(st[b] <= st[b + 1], "starts: offsets never decrease");
  const at::Tensor pos_c = pos.contiguous();
  const int64_t* ps = causal ? pos_c.data_ptr<int64_t>() : nullptr;
  at::Tensor km_c;
  const bool* km = nullptr;
  if (key_mask.has_value()) { km_c = key_mask->contiguous(); km = km_c.data_ptr<bool>(); }
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const int64_t Lp = (L + 15) / 16 * 16;
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(hd * Lp), bias(Lp), S(QB * Lp);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, q0 = st[b], q1 = st[b + 1];
      if (q0 == q1) continue;
      const float* kb = kp + b * ks0 + h * ks1;
      const bool transpose = q1 - q0 > QB;
      if (transpose)
        for (int64_t j = 0; j < L; ++j)
          for (int64_t d = 0; d < hd; ++d) kt[d * Lp + j] = kb[j * ks2 + d];
      for (int64_t j = 0; j < Lp; ++j)
        bias[j] = (j < L && (km == nullptr || km[b * L + j])) ? 0.0f : MASKED;
      fn(qp + h * hd, yp + h * hd, D, q0, q1, transpose ? kt.data() : nullptr, kb, ks2, bias.data(), L,
         Lp, vp + b * vs0 + h * vs1, vs2, ps, sc, S.data());
    }
  });
  return y;
}

// dst[rows[i]] = src[i] for rows of dst [N, W] (row-contiguous), src [R, W] contiguous.
void copy_rows(at::Tensor& dst, const at::Tensor& rows, const at::Tensor& src) {
  TORCH_CHECK(dst.dim() == 2 && src.dim() == 2 && dst.size(1) == src.size(1) && dst.stride(1) == 1
              && src.is_contiguous() && dst.scalar_type() == src.scalar_type()
              && rows.scalar_type() == at::kLong && rows.numel() == src.size(0), "copy_rows: shapes");
  const int64_t R = src.size(0), bytes = src.size(1) * src.element_size(), ds = dst.stride(0) * dst.element_size();
  const at::Tensor rc = rows.contiguous();
  const int64_t* r = rc.data_ptr<int64_t>();
  const int64_t N = dst.size(0);
  for (int64_t i = 0; i < R; ++i) TORCH_CHECK(r[i] >= 0 && r[i] < N, "copy_rows: row out of range");
  char* d = static_cast<char*>(dst.data_ptr());
  const char* s = static_cast<const char*>(src.data_ptr());
  at::parallel_for(0, R, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) std::memcpy(d + r[i] * ds, s + i * bytes, bytes);
  });
}

// The keys/values of tokens rows[i] (flat b·L + l) into cache [2, B, H, L, hd]: they are row
// src[i] of kv (row i when src is not given); a row of kv holds the token's keys (heads side by
// side), then its values.
void write_kv(at::Tensor& cache, const at::Tensor& rows, const at::Tensor& kv,
              const c10::optional<at::Tensor>& src) {
  TORCH_CHECK(cache.dim() == 5 && cache.is_contiguous() && kv.dim() == 2 && kv.stride(1) == 1
              && cache.scalar_type() == at::kFloat && kv.scalar_type() == at::kFloat
              && rows.scalar_type() == at::kLong && (src.has_value() || rows.numel() == kv.size(0))
              && kv.size(1) == 2 * cache.size(2) * cache.size(4), "write_kv: shapes");
  const int64_t B = cache.size(1), H = cache.size(2), L = cache.size(3), hd = cache.size(4);
  const int64_t R = rows.numel(), ks = kv.stride(0), part = B * H * L * hd;
  const at::Tensor rc = rows.contiguous();
  const int64_t* r = rc.data_ptr<int64_t>();
  at::Tensor sc;
  const int64_t* si = nullptr;
  if (src.has_value()) { sc = src->contiguous(); si = sc.data_ptr<int64_t>(); TORCH_CHECK(sc.numel() == R, "write_kv: src"); }
  for (int64_t i = 0; i < R; ++i)
    TORCH_CHECK(r[i] >= 0 && r[i] < B * L && (si == nullptr || (si[i] >= 0 && si[i] < kv.size(0))),
                "write_kv: row out of range");
  float* c = cache.data_ptr<float>();
  const float* s = kv.data_ptr<float>();
  at::parallel_for(0, R, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = r[i] / L, l = r[i] % L;
      const float* row = s + (si ? si[i] : i) * ks;
      for (int64_t p = 0; p < 2; ++p)
        for (int64_t h = 0; h < H; ++h)
          std::memcpy(c + p * part + ((b * H + h) * L + l) * hd, row + (p * H + h) * hd, hd * sizeof(float));
    }
  });
}

}  // namespace

TORCH_LIBRARY(ponder_kernels, m) {
  m.def("varlen_attention(Tensor q, Tensor k, Tensor v, Tensor starts, Tensor pos, Tensor? key_mask, bool causal, float scale) -> Tensor");
  m.def("copy_rows(Tensor(a!) dst, Tensor rows, Tensor src) -> ()");
  m.def("write_kv(Tensor(a!) cache, Tensor rows, Tensor kv, Tensor? src) -> ()");
}

TORCH_LIBRARY_IMPL(ponder_kernels, CPU, m) {
  m.impl("varlen_attention", &varlen_attention);
  m.impl("copy_rows", &copy_rows);
  m.impl("write_kv", &write_kv);
}
