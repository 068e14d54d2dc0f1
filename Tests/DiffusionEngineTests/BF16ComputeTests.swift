import CEngineKernels
import CheckpointFormats
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// `generate --compute bf16`: the UNet's products with both operands rounded to bfloat16
/// (nearest even) and summed in float (`wp_gemm_bf16`, oneDNN's `dnnl_gemm_bf16bf16f32`). Where
/// the processor lacks AVX512_BF16 (or the kernels are narrowed by `WEIGHTPACK_KERNELS`) the mode
/// is refused, and these tests check the refusal instead.
@Suite("bf16 products")
struct BF16ComputeTests {
    /// `x` rounded to bfloat16, nearest even (what VCVTNEPS2BF16 does for normal numbers).
    static func bf16(_ x: Float) -> Float {
        let u = x.bitPattern
        return Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000)
    }

    /// How a test asks for a bf16 product: through `GEMM.multiply` (oneDNN's bfloat16 product,
    /// or, where oneDNN uses AMX and the depth is at most 64, the widened route), or through the
    /// widened route itself (`wp_gemm_bf16_widened`: the operands rounded, widened back to
    /// floats and multiplied by `dnnl_sgemm`), which any processor with AVX512_BF16 runs.
    enum Route: String, Sendable { case engine, widened }

    /// `C = 1.5 · op(A) · op(B) + 0.5 · C` with padded leading dimensions and sizes that leave
    /// vector tails: within float's reassociation bound of the exact product of the *rounded*
    /// operands, and (the rounding is real) beyond it of the product of the unrounded ones. The
    /// depths are one above the widened route's limit and one within it (a head of 40).
    @Test(
        arguments: [(false, false), (true, false), (false, true), (true, true)],
        [(Route.engine, 301), (.engine, 40), (.widened, 301), (.widened, 40)])
    func productsAreTheRoundedOperandsProduct(_ transposes: (Bool, Bool), _ route: (Route, Int)) throws {
        guard ComputeBackend.current.bf16Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.bf16) }
            return
        }
        let (transposeA, transposeB) = transposes
        let m = 37, n = 29, k = route.1
        let (rowsA, columnsA) = transposeA ? (k, m) : (m, k)
        let (rowsB, columnsB) = transposeB ? (n, k) : (k, n)
        let lda = columnsA + 3, ldb = columnsB + 5, ldc = n + 2
        var random = TestRandom(seed: 7)
        let a = random.values(rowsA * lda), b = random.values(rowsB * ldb, scale: 3)
        let c0 = random.values(m * ldc)
        var c = c0
        switch route.0 {
        case .engine:
            GEMM.withPrecision(.bf16) {
                GEMM.multiply(
                    m: m, n: n, k: k, a: a, lda: lda, transposeA: transposeA, b: b, ldb: ldb, transposeB: transposeB,
                    c: &c, ldc: ldc, alpha: 1.5, beta: 0.5)
            }
        case .widened:
            let status = wp_gemm_bf16_widened(
                transposeA ? 1 : 0, transposeB ? 1 : 0, Int64(m), Int64(n), Int64(k), 1.5, a, nil, Int64(lda), b, nil, Int64(ldb), 0.5, &c,
                Int64(ldc), 1)
            #expect(status == 0)
        }
        func aAt(_ i: Int, _ p: Int) -> Float { transposeA ? a[p * lda + i] : a[i * lda + p] }
        func bAt(_ p: Int, _ j: Int) -> Float { transposeB ? b[j * ldb + p] : b[p * ldb + j] }
        var actual: [Float] = [], rounded: [Double] = [], unrounded: [Double] = [], magnitude: [Double] = []
        for i in 0..<m {
            for j in 0..<n {
                var exact = 0.0, plain = 0.0, size = 0.0
                for p in 0..<k {
                    let term = Double(Self.bf16(aAt(i, p))) * Double(Self.bf16(bAt(p, j)))
                    exact += term
                    size += abs(term)
                    plain += Double(aAt(i, p)) * Double(bAt(p, j))
                }
                let old = 0.5 * Double(c0[i * ldc + j])
                actual.append(c[i * ldc + j])
                rounded.append(1.5 * exact + old)
                unrounded.append(1.5 * plain + old)
                magnitude.append(1.5 * size + abs(old))
            }
        }
        let r = expectWithinReassociationBound(
            actual, reference: rounded, magnitude: magnitude, terms: k + 2, "bf16 \(transposeA)/\(transposeB) \(route.0) k=\(k)")
        var beyond = 0
        for i in actual.indices {
            let bound = Reassociation.gamma(k + 2) * magnitude[i] + Reassociation.unitRoundoff * abs(unrounded[i])
            if abs(Double(actual[i]) - unrounded[i]) > bound { beyond += 1 }
        }
        #expect(beyond > actual.count / 2, "only \(beyond) of \(actual.count) values show the operands' rounding")
        // The padding between rows is left alone.
        for i in 0..<m { for j in n..<ldc { #expect(c[i * ldc + j] == c0[i * ldc + j]) } }
        print(
            "bf16 product \(transposeA)/\(transposeB) \(route.0) k=\(k): worst error/bound \(r.worstRatio), \(beyond) of \(actual.count) beyond float's bound of the unrounded product"
        )
    }

    /// The tiny UNet in bf16 against diffusers' fp32 output, on two cores (the guidance pair,
    /// each element on its own thread) and on one element at a time (products spread over
    /// ``Parallel`` workers, which must inherit the precision): both are far from f32's
    /// agreement with diffusers (99 dB), agree with each other, and keep an SNR of at least
    /// 25 dB against diffusers (measured 28.4 dB; the full-size random SD 1.5 step: 28.5 dB).
    @Test func unetPredictsInBF16() throws {
        let model = try UNetParityTests.unet()
        let golden = try Fixture.safetensors("unet.safetensors")
        let c = model.configuration
        let sample = FloatTensor(shape: [2, c.inChannels, 8, 8], values: try golden.floats("sample"))
        let context = FloatTensor(shape: [2, 77, c.crossAttentionDimension], values: try golden.floats("encoder_hidden_states"))
        let t = Float(try golden.int64s("t999.timestep")[0])
        model.computePrecision = .bf16
        guard ComputeBackend.current.bf16Products else {
            #expect(throws: EngineError.self) { try model.predict(sample, timestep: t, encoderHiddenStates: context) }
            return
        }
        let pair = try model.predict(sample, timestep: t, encoderHiddenStates: context).scalars
        let one = c.outChannels * 64
        var single: [Float] = []
        for b in 0..<2 {
            let s = FloatTensor(shape: [c.inChannels, 8, 8], values: Array(sample.scalars[(b * c.inChannels * 64)..<((b + 1) * c.inChannels * 64)]))
            let e = FloatTensor(
                shape: [1, 77, c.crossAttentionDimension], values: Array(context.scalars[(b * context.count / 2)..<((b + 1) * context.count / 2)]))
            single += try model.predict(s, timestep: t, encoderHiddenStates: e).scalars
        }
        model.computePrecision = .f32
        let f32 = try model.predict(sample, timestep: t, encoderHiddenStates: context).scalars
        let reference = try golden.floats("t999.out")
        #expect(one * 2 == reference.count)
        let pairSNR = snr(reference, pair), singleSNR = snr(reference, single), f32SNR = snr(reference, f32)
        print("tiny UNet t999 against diffusers: bf16 pair \(pairSNR) dB, bf16 one at a time \(singleSNR) dB, f32 \(f32SNR) dB")
        #expect(pairSNR >= 25 && singleSNR >= 25)
        #expect(snr(pair, single) >= 60, "the pair and the single elements differ: \(snr(pair, single)) dB")
        #expect(pairSNR < f32SNR - 10 && singleSNR < f32SNR - 10, "the bf16 predictions are as close as f32's: products not in bf16?")
    }

    /// A weight rounded to bfloat16 once for two providers (the UNet's cores computing in bf16)
    /// straight from the stored weight, in chunks both make: every value is the weight's value
    /// rounded to nearest even, bit for bit, it is made once, and nothing stays held.
    @Test(arguments: ["f32", "f16", "int8"])
    func aWeightRoundedOnceForBothCoresIsTheRoundedWeight(_ kind: String) throws {
        guard ComputeBackend.current.bf16Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.bf16) }
            return
        }
        let rows = 300, columns = 1_000  // 300,000 values: chunks of 262 rows, made by both
        var random = TestRandom(seed: 61)
        let folder = try Int8ParityTests.folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = try SharedConversionTests.store(
            "w.weight", shape: [rows, columns], values: random.values(rows * columns, scale: 3), as: kind, in: folder)
        if kind == "int8" { #expect(WeightProvider(store: store).isQuantized("w.weight")) }
        let expected = try WeightProvider(store: store).floats("w.weight").map { UInt16(Self.bf16($0).bitPattern >> 16) }
        let shared = SharedConvertedWeights(consumers: 2)
        let results = Locked<[Int: [UInt16]]>([:])
        let box = UnsafeSendableBox((store, shared))
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let provider = WeightProvider(store: box.value.0)
            provider.sharedConversions = box.value.1
            var values: [UInt16] = []
            let made = try? provider.withSharedBF16Weight("w.weight") { p in values = Array(UnsafeBufferPointer(start: p, count: rows * columns)) }
            results.withLock { $0[i] = made == true ? values : [] }
        }
        for i in 0..<2 {
            let values = results.withLock { $0[i] } ?? []
            let mismatches = zip(values, expected).filter { $0 != $1 }.count
            #expect(values.count == expected.count && mismatches == 0, "provider \(i): \(values.count) values, \(mismatches) differ")
        }
        #expect(shared.conversions == 1 && shared.reuses == 1 && shared.floatsHeld == 0)
        // Too small to share: not made, and the caller keeps its own path.
        let small = MemoryStore()
        small.add("b.weight", shape: [4, 4], values: random.values(16), dtype: .f32)
        let provider = WeightProvider(store: small)
        provider.sharedConversions = shared
        #expect(try provider.withSharedBF16Weight("b.weight") { _ in Issue.record("a 16-value weight was shared") } == false)
    }

    /// A weight stored as BF16 is handed to the bf16 products where it is, with no copy: the
    /// provider gives back the stored bits and makes nothing.
    @Test func aBF16StoredWeightIsReadInPlace() throws {
        guard ComputeBackend.current.bf16Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.bf16) }
            return
        }
        var random = TestRandom(seed: 64)
        let store = MemoryStore()
        store.add("w.weight", shape: [300, 1_000], values: random.values(300_000), dtype: .bf16)
        let stored = try store.tensor(named: "w.weight").bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        let shared = SharedConvertedWeights(consumers: 2)
        let provider = WeightProvider(store: store)
        provider.sharedConversions = shared
        var values: [UInt16] = []
        #expect(try provider.withSharedBF16Weight("w.weight") { values = Array(UnsafeBufferPointer(start: $0, count: 300_000)) })
        #expect(values == stored && values.count == 300_000)
        #expect(shared.conversions == 0 && shared.floatsHeld == 0)
    }

    /// Each kind of layer computed in bf16 by two workspaces at once whose providers share (the
    /// weights, and Winograd's transformed weights, rounded once for both) against one
    /// workspace alone, which rounds them in its products: a linear layer, a 3x3 convolution
    /// at 32x32 (Winograd), one at 12x12 (im2col, lowered once) and a 1x1 one, from F32, F16
    /// and BF16 weights. The same bfloat16 operands go to the same products (the Winograd block is
    /// transformed in one chunk here, as the single workspace does), so the outputs agree to
    /// float rounding; measured, they are identical.
    @Test(arguments: [DType.f32, .f16, .bf16])
    func layersOnTwoCoresRoundTheirWeightsOnceAndMatchOneCore(_ dtype: DType) throws {
        guard ComputeBackend.current.bf16Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.bf16) }
            return
        }
        var random = TestRandom(seed: 62)
        let store = MemoryStore()
        store.add("lin.weight", shape: [300, 256], values: random.values(300 * 256, scale: 0.1), dtype: dtype)
        store.add("lin.bias", shape: [300], values: random.values(300), dtype: dtype)
        store.add("wino.weight", shape: [24, 16, 3, 3], values: random.values(24 * 16 * 9, scale: 0.1), dtype: dtype)
        store.add("im2col.weight", shape: [64, 128, 3, 3], values: random.values(64 * 128 * 9, scale: 0.05), dtype: dtype)
        store.add("point.weight", shape: [256, 320, 1, 1], values: random.values(256 * 320, scale: 0.1), dtype: dtype)
        let layers = [
            LayerInput(name: "lin", values: random.values(70 * 256), shape: [70, 256]),
            LayerInput(name: "wino", values: random.values(16 * 32 * 32), shape: [16, 32, 32]),
            LayerInput(name: "im2col", values: random.values(128 * 12 * 12), shape: [128, 12, 12]),
            LayerInput(name: "point", values: random.values(320 * 8 * 8), shape: [320, 8, 8]),
        ]
        let alone = try runLayers(WeightProvider(store: store), .bf16, layers)
        let shared = SharedConvertedWeights(consumers: 2, minimumFloats: 1)
        let cores = runLayersOnTwoSharingCores(store, shared, .bf16, layers)
        for i in 0..<2 {
            let outputs = cores[i]
            #expect(outputs.count == 4)
            for (layer, (actual, expected)) in zip(["linear", "winograd", "im2col", "pointwise"], zip(outputs, alone)) {
                let c = expectClose(actual, expected, shape: [expected.count], tolerance: 1e-5, "core \(i), \(layer), \(dtype.name)")
                print("bf16 \(layer) from \(dtype.name) weights, core \(i) against one core: max abs difference \(c.maxAbsoluteError)")
            }
        }
        // Made once, by one provider, and reused by the other: the three weights rounded and
        // Winograd's one block transformed and rounded (and for F16, the linear bias's float
        // copy); BF16 weights are read where they are, so only the block and the bias.
        let made = dtype == .f16 ? 5 : dtype == .bf16 ? 2 : 4
        #expect(shared.conversions == made && shared.reuses == made && shared.floatsHeld == 0, "made \(shared.conversions)")
    }

    /// Attention under bf16 compute, which rounds the keys and values once per call and has the
    /// softmax write its probabilities already rounded, against the plain sequence per head (the
    /// products rounding their float operands, the softmax in float): 3 heads of 24, 45 queries
    /// in chunks of 7 (a short last chunk), 45 keys with 7 padded floats per row, causal and
    /// not. The same bfloat16 values reach the same products; measured, the outputs agree to
    /// float rounding. Also without the rounding scratch (the probabilities only).
    @Test(arguments: [false, true])
    func attentionRoundsKeysValuesAndProbabilitiesOnce(_ causal: Bool) throws {
        guard ComputeBackend.current.bf16Products else {
            #expect(throws: EngineError.self) { try UNet2DConditionModel.checkAvailable(.bf16) }
            return
        }
        let heads = 3, d = 24, n = 45, stride = heads * d + 7, chunk = 7
        var random = TestRandom(seed: 63)
        let q = random.values(n * stride), k = random.values(n * stride), v = random.values(n * stride)
        let scale = 1 / Float(d).squareRoot()
        // The reference, head by head: products in bf16 on float operands, softmax in float.
        var expected = [Float](repeating: 0, count: n * stride)
        GEMM.withPrecision(.bf16) {
            for h in 0..<heads {
                var scores = [Float](repeating: 0, count: n * n)
                GEMM.multiply(
                    m: n, n: n, k: d, a: q.withUnsafeBufferPointer { $0.baseAddress! + h * d }, lda: stride,
                    b: k.withUnsafeBufferPointer { $0.baseAddress! + h * d }, ldb: stride, transposeB: true, c: &scores, ldc: n, alpha: scale)
                for i in 0..<n {
                    if causal { for j in (i + 1)..<max(i + 1, n) { scores[i * n + j] = -.infinity } }
                    scores.withUnsafeMutableBufferPointer { Kernels.softmaxRow($0.baseAddress! + i * n, count: n) }
                }
                expected.withUnsafeMutableBufferPointer { out in
                    GEMM.multiply(
                        m: n, n: d, k: n, a: scores, lda: n, b: v.withUnsafeBufferPointer { $0.baseAddress! + h * d }, ldb: stride,
                        c: out.baseAddress! + h * d, ldc: stride)
                }
            }
        }
        for withScratch in [true, false] {
            var out = [Float](repeating: 0, count: n * stride)
            let scoreCount = Attention.scratchCount(queries: n, keys: n, heads: heads, headDimension: d, chunk: chunk, packed: false)
            var scratch = [Float](repeating: .nan, count: scoreCount + Attention.roundedScratchCount(keys: n, kStride: stride, vStride: stride))
            GEMM.withPrecision(.bf16) {
                Parallel.serially {
                    scratch.withUnsafeMutableBufferPointer { s in
                        Attention.forward(
                            q: q, qStride: stride, k: k, kStride: stride, v: v, vStride: stride, out: &out, outStride: stride,
                            queries: n, keys: n, heads: heads, headDimension: d, scale: scale, causal: causal, chunk: chunk,
                            scores: s.baseAddress!, packed: false, rounded: withScratch ? s.baseAddress! + scoreCount : nil)
                    }
                }
            }
            var worst: Float = 0
            for t in 0..<n {
                for c in 0..<(heads * d) { worst = max(worst, abs(out[t * stride + c] - expected[t * stride + c])) }
            }
            print("bf16 attention (causal \(causal), rounding scratch \(withScratch)): max abs difference \(worst)")
            #expect(worst <= 1e-5, "causal \(causal), scratch \(withScratch): \(worst)")
        }
    }
}
