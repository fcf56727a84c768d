// Weight-only int8 products for decoding on a CPU: y = (x @ q.T) * scale + bias, reading each int8 weight once.
// torch's own _weight_int8pack_mm has no vector path on AVX2 CPUs (measured 5x slower than fp32), so this is
// hand-written: each output row converts its int8 weights to fp32 in registers, never in memory. One row at a time
// with eight running sums measured fastest here (3.2-3.7x fp32's product at one input row, AVX2 EPYC); two rows at
// once ran out of registers and was half as fast.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __m256 load8(const int8_t* p) {  // 8 int8 from memory as 8 fp32 (vpmovsxbd reads them itself)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// The dot product of one int8 row with one fp32 input: 8 independent sums keep the FMA units busy.
inline float dot_row(const int8_t* w, const float* x, int64_t k) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {
        for (int j = 0; j < 8; ++j)
            acc[j] = _mm256_fmadd_ps(load8(w + i + 8 * j), _mm256_loadu_ps(x + i + 8 * j), acc[j]);
    }
    for (; i + 8 <= k; i += 8) acc[0] = _mm256_fmadd_ps(load8(w + i), _mm256_loadu_ps(x + i), acc[0]);
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
                             _mm256_add_ps(_mm256_add_ps(acc[4], acc[5]), _mm256_add_ps(acc[6], acc[7])));
    float sum = horizontal_sum(s);
    for (; i < k; ++i) sum += static_cast<float>(w[i]) * x[i];
    return sum;
}

}  // namespace

// x: (m, k) fp32 contiguous; q: (n, k) int8 contiguous; scale: (n,) fp32; bias: (n,) fp32 or empty.
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor bias) {
    TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == q.size(1), "int8_linear: shapes (m, k) and (n, k)");
    TORCH_CHECK(x.scalar_type() == at::kFloat && q.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
                "int8_linear: x fp32, q int8, scale fp32");
    x = x.contiguous(); q = q.contiguous(); scale = scale.contiguous();
    const int64_t m = x.size(0), k = x.size(1), n = q.size(0);
    const bool has_bias = bias.numel() > 0;
    TORCH_CHECK(scale.numel() == n && (!has_bias || (bias.numel() == n && bias.scalar_type() == at::kFloat)),
                "int8_linear: a scale (and a bias, fp32) per output row");
    if (has_bias) bias = bias.contiguous();
    auto y = torch::empty({m, n}, x.options());
    const float* xp = x.data_ptr<float>();
    const int8_t* qp = q.data_ptr<int8_t>();
    const float* sp = scale.data_ptr<float>();
    const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {  // a weight row is read from memory once, for every input
            const float add = has_bias ? bp[row] : 0.0f;
            for (int64_t r = 0; r < m; ++r) yp[r * n + row] = dot_row(qp + row * k, xp + r * k, k) * sp[row] + add;
        }
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("int8_linear", &int8_linear, "y = (x @ q.T) * scale + bias, int8 weights read once");
}
