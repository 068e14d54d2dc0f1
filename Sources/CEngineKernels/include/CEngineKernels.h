// The engine's compute back end, in C: run-time CPU detection, the oneDNN matrix product, and
// kernels compiled once per instruction-set family and chosen at run time (see Docs/engine.md,
// "Compute back end"). Swift cannot compile one function for several instruction sets; C can
// (per-function `__attribute__((target(...)))`), so one binary runs on every x86-64 machine.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Kernel families, widest last.
typedef enum {
    WP_KERNELS_BASELINE = 0, ///< x86-64 baseline (SSE2), or any other processor
    WP_KERNELS_AVX2 = 1,     ///< AVX2 + FMA + F16C
    WP_KERNELS_AVX512 = 2,   ///< AVX-512 F, BW, VL, DQ
} wp_kernels;

/// What `WEIGHTPACK_KERNELS` asked for, and what became of it.
typedef enum {
    WP_REQUEST_NONE = 0,      ///< not set (or empty): the processor's widest family
    WP_REQUEST_HONOURED = 1,  ///< set to a family the processor has
    WP_REQUEST_CLAMPED = 2,   ///< set to a family the processor lacks: its widest is used
    WP_REQUEST_UNKNOWN = 3,   ///< set to something else: ignored
} wp_request_status;

/// Reads `WEIGHTPACK_KERNELS`, detects the processor and limits oneDNN to the chosen family.
/// Idempotent and thread-safe; every other function calls it first.
void wp_backend_init(void);

/// The widest family the processor (and operating system) supports, from CPUID feature bits.
wp_kernels wp_processor_kernels(void);
/// The family in use: the processor's, or a narrower one forced by `WEIGHTPACK_KERNELS`.
wp_kernels wp_selected_kernels(void);
/// What became of `WEIGHTPACK_KERNELS`.
wp_request_status wp_request(void);
/// The value of `WEIGHTPACK_KERNELS` at start-up (empty when unset); at most 31 characters kept.
const char *wp_request_text(void);

/// oneDNN's version and the instruction set it dispatches to (`dnnl_cpu_isa_t` as text).
void wp_dnnl_version(int *major, int *minor, int *patch);
const char *wp_dnnl_isa_name(void);

/// `C = alpha * op(A) * op(B) + beta * C`, row-major, through oneDNN's `dnnl_sgemm`, on
/// `threads` OpenMP threads of the calling thread (1 inside work already spread over the
/// cores). Returns 0, or oneDNN's status.
int wp_sgemm(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
             float *c, int64_t ldc, int threads);

/// Time spent per shape in the products (`wp_sgemm`, kind 0: `flags` 1 for a transposed A, 2
/// for a transposed B, 4 for `wp_gemm_f16_weight`, 6 for `wp_gemm_f16_weight_linear`, 8 for `wp_gemm_f32_tiles`, 16 for `wp_gemm_amx_split` (18 with a transposed F16 B)) and in fused attention (kind 1: `m` query rows, `n` keys, `k` width),
/// recorded between `wp_profile_start` and `wp_profile_stop` for the benchmarks (profile.c).
/// Kind -1 sums the calls beyond the table's 1024 distinct shapes.
typedef struct {
    int32_t kind, flags;
    int64_t m, n, k, calls;
    double seconds;
} wp_profile_record;
void wp_profile_start(void);
void wp_profile_stop(void);
int wp_profiling(void);
double wp_profile_clock(void);
void wp_profile_add(int32_t kind, int32_t flags, int64_t m, int64_t n, int64_t k, double seconds);
/// Copies at most `capacity` records into `into`; returns how many there are.
int64_t wp_profile_read(wp_profile_record *into, int64_t capacity);

/// Whether `wp_gemm_f16_weight` can run: the AVX-512 family is selected (gemm_f16.c).
int wp_f16_weight_products(void);
/// `C[m][n] = A[m][k] B[k][n]` (`+=` when `accumulate`), row-major with leading dimensions, A
/// stored as IEEE half precision (widened exactly), B and C float, every multiply-add in float, on
/// the calling thread. Returns 0; -1 when `wp_f16_weight_products()` is 0; -2 when memory is
/// short; -3 for a negative size or a leading dimension shorter than its row.
int wp_gemm_f16_weight(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda, const float *b, int64_t ldb, float *c,
                       int64_t ldc, int accumulate);
/// `C[m][n] = A[m][k] B[k][n]` (`+=` when `accumulate`), all float, with the tiles of
/// `wp_gemm_f16_weight` (A's rows broadcast where they are), on the calling thread; its own
/// order of the multiply-adds, each row of C independent of the others. Returns as
/// `wp_gemm_f16_weight` (-1 when `wp_f16_weight_products()` is 0).
int wp_gemm_f32_tiles(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc,
                      int accumulate);
/// A linear layer's product with an F16 weight: `C[m][n] = X[m][k] W[n][k]ᵀ`, X and C float, W
/// half precision, as `wp_gemm_f16_weight`. Returns as it does.
int wp_gemm_f16_weight_linear(int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx, const uint16_t *w, int64_t ldw,
                              float *c, int64_t ldc);

/// Whether the processor has AMX tiles with bfloat16 products that Linux lets this process use
/// (CPUID, XCR0, then `ARCH_REQ_XCOMP_PERM`), with the AVX-512 family and AVX512_BF16 selected.
int wp_amx_processor(void);
/// Whether `wp_gemm_amx_split` runs: `wp_amx_processor()`, unless `WEIGHTPACK_AMX=0` at start-up
/// (which keeps every F16 product in float, for tests and comparisons).
int wp_amx_products(void);
/// `C = A B` (`+ C` when `accumulate`) on AMX tiles in split bfloat16 (gemm_amx.c): every operand
/// value as the sum of two bfloat16 parts, the products hi·hi + hi·lo + lo·hi summed in float.
/// A is row-major `m x k`, floats or (`aHalf`) F16; B is row-major `k x n` floats, or
/// (`bTransposedHalf`) an F16 `n x k` whose transpose is B (a linear layer's weight). Within
/// about 2^-16 of Σ|a||b| of the exact product: for products with an F16 weight only (see the
/// file). On the calling thread. Returns 0, -1 when `wp_amx_products()` is 0, -2 when its buffers
/// cannot be allocated, -3 for a negative size or a leading dimension shorter than its row.
int wp_gemm_amx_split(int64_t m, int64_t n, int64_t k, const void *a, int aHalf, int64_t lda, const void *b, int bTransposedHalf,
                      int64_t ldb, float *c, int64_t ldc, int accumulate);

/// Whether `wp_gemm_bf16` can run: the AVX-512 family is selected and the processor has
/// AVX512_BF16.
int wp_bf16_products(void);

/// Whether the int8 products (`wp_q8_*`, `--compute int8`) can run: the AVX-512 family is
/// selected and the processor has AVX512_VNNI.
int wp_q8_products(void);
/// Bytes `wp_q8_quantize` writes for `rows` rows of `k` values (`k` a multiple of 32; 0 if not).
size_t wp_q8_activation_bytes(int64_t rows, int64_t k);
/// Quantises `rows` rows of `k` values (row r's value j at `a[r * strideRow + j * strideValue]`)
/// in blocks of 32 per row, one scale each (amax / 127, nearest even), into the packed form
/// `wp_q8_gemm` reads. One of the strides must be 1. Returns 0, -1 when `wp_q8_products()` is 0, -2 for bad sizes.
int wp_q8_quantize(const float *a, int64_t rows, int64_t k, int64_t strideRow, int64_t strideValue, void *packed);
/// A convolution's geometry for `wp_q8_quantize_patches`.
typedef struct {
    int64_t channels, height, width;
    int64_t kernelHeight, kernelWidth, stride, padTop, padLeft;
    int64_t outWidth;
} wp_q8_geometry;
/// `wp_q8_quantize` of the im2col rows of output pixels `firstPixel ..< firstPixel + rows` of a
/// convolution of `input` (`channels` planes of `height` x `width`), read straight from the
/// input: each row is the pixel's patch in (channel, kernel row, kernel column) order, zero
/// outside the image; `channels * kernelHeight * kernelWidth` must be a multiple of 32.
/// Returns 0, -1 when `wp_q8_products()` is 0, -2 for bad sizes.
int wp_q8_quantize_patches(const float *input, const wp_q8_geometry *geometry, int64_t firstPixel, int64_t rows, void *packed);
/// Adds to `sums[j]` (`k` doubles) the squared error that `wp_q8_quantize`'s quantisation gives
/// value j of each of `rows` rows (row r's value j at `a[r * strideRow + j * strideValue]`):
/// `(x - scale * q)^2` with the kernels' scale and rounding. Portable (any processor), for
/// predictions rather than products. Returns 0, -2 for bad sizes, -3 when out of memory.
int wp_q8_noise(const float *a, int64_t rows, int64_t k, int64_t strideRow, int64_t strideValue, double *sums);
/// `wp_q8_noise` of the patches `wp_q8_quantize_patches` quantises for output pixels
/// `firstPixel ..< firstPixel + rows` (`sums` has `channels * kernelHeight * kernelWidth` entries,
/// in the patch's order; padding counts as exact zeros). Returns 0, -2 for bad sizes, -3 when out of memory.
int wp_q8_noise_patches(const float *input, const wp_q8_geometry *geometry, int64_t firstPixel, int64_t rows, double *sums);
/// For `rows` rows of an int8 block weight (`k` values per row, blocks of 32 with f16 scales,
/// `blocksPerRow` scales per row): each block's scale as float and 128 x the sum of its values,
/// `k / 32` per row. Returns 0, -1 when `wp_q8_products()` is 0, -2 for bad sizes.
int wp_q8_weight_aux(const int8_t *values, const void *scales, int64_t rows, int64_t k, int64_t blocksPerRow, float *scaleOut,
                     int32_t *correction);
/// `wp_q8_weight_aux` for ggml Q8_0 rows (`rowBytes` apart; blocks of an f16 scale and 32 int8).
int wp_q8_weight_aux_q8_0(const void *blocks, int64_t rows, int64_t k, int64_t rowBytes, float *scaleOut, int32_t *correction);
/// `C(r, j) (+)= sum over blocks of scaleA(r) * scaleW(j) * (A's block of row r . W's block of
/// row j)` for `rows` packed activation rows and `n` weight rows (`ldw` bytes apart, block b's 32
/// values at `w + b * blockBytes` within a row: 32 for our int8 blocks, 34 for Q8_0 with `w` past
/// the first scale; with their `wp_q8_weight_aux` figures); `C(r, j)` is at `c[r * ldcRow + j * ldcColumn]`, one of the two
/// 1; `accumulate` (only with `ldcRow` 1) adds to C instead of overwriting it. Returns 0, -1 when
/// `wp_q8_products()` is 0, -2 for bad sizes.
int wp_q8_gemm(int64_t rows, int64_t n, int64_t k, const void *packed, const int8_t *w, int64_t ldw, int64_t blockBytes,
               const float *wScale, const int32_t *wCorr, float *c, int64_t ldcRow, int64_t ldcColumn, int accumulate);

/// `wp_sgemm` computed with both operands rounded to bfloat16 (nearest even) and products
/// summed in float, through oneDNN's `dnnl_gemm_bf16bf16f32`; the operands are converted into
/// buffers of the calling thread. Returns 0, -1 when `wp_bf16_products()` is 0, -2 when the
/// buffers cannot be allocated, or oneDNN's status.
int wp_gemm_bf16(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                 float *c, int64_t ldc, int threads);

/// `wp_gemm_bf16` where either operand may come already rounded: when `a16` (or `b16`) is not
/// NULL it is that operand in bfloat16, stored as `a` would be with leading dimension `lda`
/// (`ldb`), and is used as it is; `a` (`b`) is then ignored. Same returns.
int wp_gemm_bf16_rounded(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, const uint16_t *a16, int64_t lda, const float *b, const uint16_t *b16, int64_t ldb,
                         float beta, float *c, int64_t ldc, int threads);

/// `wp_gemm_bf16_rounded` through `dnnl_sgemm` on the operands rounded to bfloat16 and widened
/// back to floats: the same products, summed in float. `wp_gemm_bf16_rounded` takes this route
/// itself where oneDNN uses AMX and the depth `k` is at most 64 (oneDNN's AMX product adds its
/// result into C one element at a time, which dominates at little depth). Same returns.
int wp_gemm_bf16_widened(int transposeA, int transposeB, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, const uint16_t *a16, int64_t lda, const float *b, const uint16_t *b16, int64_t ldb,
                         float beta, float *c, int64_t ldc, int threads);

/// `rows` rows of `columns` floats, `ld` apart, rounded to bfloat16 (nearest even; subnormal
/// inputs read as zero) into `target`, `targetLd` apart: what `wp_gemm_bf16` does to its
/// operands. Returns 0, or -1 when `wp_bf16_products()` is 0 (nothing written).
int wp_round_bf16(const float *source, int64_t rows, int64_t columns, int64_t ld, uint16_t *target, int64_t targetLd);

/// Conversions of weights to `float`, in the selected family's instructions.
/// `count` 16-bit IEEE halves at `source` (any alignment) to floats.
void wp_f16_to_f32(const void *source, float *target, size_t count);
/// `count` bfloat16 values at `source` (any alignment) to floats.
void wp_bf16_to_f32(const void *source, float *target, size_t count);
/// Rows `firstRow ..< firstRow + rows` of a block-quantised int8 matrix (rows of `rowLength`
/// values, `blockSize` values per scale; scales are little-endian halves, `blocksPerRow` per
/// row, at `scales`) to floats at `target` (`rows * rowLength`).
void wp_dequantize_int8(const int8_t *payload, const void *scales, size_t rowLength, size_t blockSize,
                        size_t blocksPerRow, size_t firstRow, size_t rows, float *target);

/// Whether `wp_dequantize_ggml` decodes ggml type `type` (its `ggml_type` number): Q4_0, Q4_1,
/// Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
int wp_ggml_decodes(int type);
/// `blocks` whole blocks of ggml type `type` at `source` (any alignment) to floats at `target`,
/// bit for bit what `GGMLBlocks.dequantize` computes. Returns 0, or -1 for a type not decoded here.
int wp_dequantize_ggml(int type, const void *source, size_t blocks, float *target);

/// Summary statistics of a tensor (`inspect --stats`); min/max/mean/m2 over finite values.
typedef struct {
    int64_t count, finite, nan, zero, beyond; ///< beyond: finite values with |x| > 65504
    float min, max;                           ///< ±infinity swapped when nothing is finite
    double mean, m2;                          ///< m2: the sum of squared deviations from the mean
} wp_statistics;
/// Statistics of `count` values at `source` (any alignment) of `dtype`: 0 F32, 1 F16, 2 BF16.
/// Returns 0, or -1 for another dtype.
int wp_tensor_statistics(int dtype, const void *source, size_t count, wp_statistics *out);

/// Winograd F(4x4, 3x3) input transform (`V = Bᵀ d B`) for channels `channelLo ..< channelHi`
/// and tiles `tileLo ..< tileHi` of a `[C, height, width]` image; `v` holds 36 matrices
/// `[C][tileHi - tileLo]`, `plane` floats apart. `scratch`: `12 * (4 * tilesWide + 2)` floats.
/// The same arithmetic as `Convolution.transformInput` (Convolution+Winograd.swift).
void wp_winograd_input(const float *input, int64_t height, int64_t width, int64_t channelLo, int64_t channelHi,
                       int64_t tileLo, int64_t tileHi, float *v, int64_t plane, float *scratch);
/// Winograd output transform (`Y = Aᵀ M A` + bias (+ residual)) for output channels
/// `channelLo ..< channelHi`; `m` holds 36 matrices `[outC][tileHi - tileLo]`, `plane` floats
/// apart; `bias` and `residual` may be null. `scratch`: `40 * tilesWide` floats.
void wp_winograd_output(const float *m, int64_t plane, int64_t height, int64_t width, int64_t channelLo, int64_t channelHi,
                        int64_t tileLo, int64_t tileHi, const float *bias, const float *residual, float *output, float *scratch);

/// Softmax of one row of `count` floats in place: the maximum, `exp(x - max)` and its sum, the
/// scaling; -infinity (masked) entries give exactly 0, a row of only those gives zeros. `exp` is
/// `Kernels.exp`'s branch-free Cephes polynomial (Kernels.swift), vectorised per family.
void wp_softmax_row(float *row, size_t count);
/// `wp_softmax_row`, then the values rounded to bfloat16 (nearest even) and written as
/// `count` bfloat16 over the row's first half: row `i` of a score matrix stays where it was, as
/// bfloat16 with twice the float stride. Returns 0, or -1 when `wp_bf16_products()` is 0.
int wp_softmax_row_bf16(float *row, size_t count);

/// `y[i][j] = x[i][j] * gelu(x[i][features + j])` for `rows` rows of `2 * features` floats
/// (GEGLU; erf by Abramowitz and Stegun 7.1.26, as Swift's `Kernels.erf`). With a `bias` of
/// `2 * features` floats (NULL for none), `x[i][k] + bias[k]` is used for every `x[i][k]`.
void wp_geglu_rows(const float *x, int64_t rows, int64_t features, const float *bias, float *y);
/// `x[i][j] += y[i][j] + bias[j]` for `rows` rows of `columns` floats (`x += y` when `bias` is
/// NULL), `y + bias` rounded first.
void wp_add_rows(const float *y, int64_t rows, int64_t columns, const float *bias, float *x);
/// Rows `begin ..< end` of the row-major `x[rows][columns]` written transposed into
/// `y[columns][rows]` (an exact copy, per kernel family).
void wp_transpose_rows(const float *x, int64_t rows, int64_t columns, int64_t begin, int64_t end, float *y);
/// Layer normalisation of `rows` rows of `features` floats (mean and biased variance in double
/// precision, 8 partial sums per pass), then `* weight + bias`.
void wp_layer_norm_rows(const float *x, float *y, int64_t rows, int64_t features, float epsilon, const float *weight,
                        const float *bias);

/// `y[i] = x[i] * scale + shift` for `count` floats, then SiLU (`v / (1 + exp(-v))`, the
/// softmax's `exp`) when `silu` is not 0. `x` and `y` may be the same.
void wp_scale_shift(const float *x, float *y, int64_t count, float scale, float shift, int silu);

/// Whether the fused attention kernels run: the AVX-512 family is selected.
int wp_attention_fused(void);
/// Whether they pay for one head of `keys` keys and width `d`: its packed keys and values fit
/// in three quarters of the core's L2 cache, which every block of 8 query rows reads through
/// (measured: 0.8× the BLAS products' time for SD 1.5's 4096 keys of 40 floats, 1.2× for 4096
/// of 64 at 2 MiB of L2; Docs/engine.md, "Fused attention").
int wp_attention_fused_fits(int64_t keys, int64_t d);
/// Floats of scratch `wp_attention_pack` and `wp_attention_rows` need for one head of `keys`
/// keys and width `d` (the packed keys and values, and 8 rows of scores); 0 if either is not
/// positive.
size_t wp_attention_scratch_floats(int64_t keys, int64_t d);
/// Packs one head (`keys` rows of `d` floats, `kStride` / `vStride` floats apart) into the
/// first floats of `scratch`: the keys transposed, the values padded (attention.c).
void wp_attention_pack(const float *k, int64_t kStride, const float *v, int64_t vStride, int64_t keys, int64_t d,
                       float *scratch);
/// `out[i] = softmax(scale * q[i] · kᵀ) v` for `rows` query rows (`qStride` / `outStride`
/// floats apart; `d` floats written per row) against the head packed in `scratch`, whose
/// remaining floats hold the scores. Returns 0, or -1 when `wp_attention_fused()` is 0.
int wp_attention_rows(const float *q, int64_t qStride, int64_t rows, float *scratch, int64_t keys, int64_t d,
                      float scale, float *out, int64_t outStride);
/// Keys per block for heads too large for `wp_attention_fused_fits`: the head split into equal
/// blocks (in 48s) whose packed keys and values fit in three quarters of L2 (`keys` when the
/// whole head fits; 0 where the fused kernels do not run or fewer than 1024 keys would fit).
int64_t wp_attention_key_block(int64_t keys, int64_t d);
/// `wp_attention_rows` for one block of a head's keys, packed into `scratch` alone: `state`
/// (2 floats per row: the maximum and sum so far) carries each row's softmax from block to
/// block, `out` holds the unnormalised sums until `last` (flash attention's online softmax);
/// `first` starts the rows afresh. With `state` NULL, the whole head (first and last).
int wp_attention_rows_block(const float *q, int64_t qStride, int64_t rows, float *scratch, int64_t keys, int64_t d,
                            float scale, float *out, int64_t outStride, float *state, int first, int last);

/// Threads a product uses outside single-threaded sections (default: `WEIGHTPACK_GEMM_THREADS`,
/// else `OMP_NUM_THREADS`, else `OPENBLAS_NUM_THREADS`, else `fallback`).
int wp_gemm_threads(int fallback);
void wp_set_gemm_threads(int threads);
/// Opens and closes a section in which every product runs on one thread (atomic counter).
void wp_single_threaded_enter(void);
void wp_single_threaded_leave(void);
int wp_single_threaded(void);

#ifdef __cplusplus
}
#endif
