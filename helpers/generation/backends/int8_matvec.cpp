// Weight-only int8 products for decoding on a CPU: y = (x @ q.T) * scale + bias, reading each int8 weight once.
// torch's own _weight_int8pack_mm has no vector path on AVX2 CPUs (measured 5x slower than fp32), so this is
// hand-written: each output row converts its int8 weights to fp32 in registers, never in memory.
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

inline __m256 widen(__m128i eight_bytes) {  // the low 8 int8 of a 128-bit lane as 8 fp32
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight_bytes));
}

// Dot products of ROWS consecutive int8 rows with one fp32 input: 4 independent sums per row keep the FMA units
// busy (one chain would wait on each FMA's latency), and each load of x serves every row.
template <int ROWS>
inline void dot_rows(const int8_t* w, const float* x, int64_t k, float* out) {
    __m256 acc[ROWS][4];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        const __m256 x2 = _mm256_loadu_ps(x + i + 16), x3 = _mm256_loadu_ps(x + i + 24);
        for (int r = 0; r < ROWS; ++r) {
            const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * k + i));
            const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
            acc[r][0] = _mm256_fmadd_ps(widen(lo), x0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(widen(_mm_srli_si128(lo, 8)), x1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(widen(hi), x2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(widen(_mm_srli_si128(hi, 8)), x3, acc[r][3]);
        }
    }
    for (int r = 0; r < ROWS; ++r) {
        float sum = horizontal_sum(_mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
        for (int64_t j = i; j < k; ++j) sum += static_cast<float>(w[r * k + j]) * x[j];
        out[r] = sum;
    }
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
        float out[2];
        int64_t row = begin;
        for (; row + 2 <= end; row += 2) {  // each pair of weight rows is read from memory once, for every input
            for (int64_t r = 0; r < m; ++r) {
                dot_rows<2>(qp + row * k, xp + r * k, k, out);
                yp[r * n + row] = out[0] * sp[row] + (has_bias ? bp[row] : 0.0f);
                yp[r * n + row + 1] = out[1] * sp[row + 1] + (has_bias ? bp[row + 1] : 0.0f);
            }
        }
        for (; row < end; ++row) {
            for (int64_t r = 0; r < m; ++r) {
                dot_rows<1>(qp + row * k, xp + r * k, k, out);
                yp[r * n + row] = out[0] * sp[row] + (has_bias ? bp[row] : 0.0f);
            }
        }
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("int8_linear", &int8_linear, "y = (x @ q.T) * scale + bias, int8 weights read once");
}
