import CEngineKernels
import Foundation
import TensorCore
import TestSupport
import Testing

@testable import DiffusionEngine

/// Float products on our own tiles (`wp_gemm_f32_tiles`, `CEngineKernels/gemm_f16.c`), which the
/// engine uses instead of oneDNN's `sgemm` on the single-threaded shapes where oneDNN 2.6.3 falls
/// below its own rate (``GEMM/f32TilesSuit(m:n:k:)``). The AVX-512 family has them; elsewhere the
/// entry point refuses (-1) and the products stay with oneDNN, which these tests check too.
@Suite("float products on our tiles")
struct F32TileTests {
    /// Within the reassociation bound of the exact product on shapes with every edge (rows not a
    /// multiple of six, so the last tile's rows are copied beside zeros; columns not of 64 or 16;
    /// depth beyond one block of 384 and not a multiple of 16), with leading dimensions longer
    /// than the rows (their extra floats untouched), stored and accumulated.
    @Test(arguments: [[13, 70, 777], [6, 64, 384], [1, 1, 1], [50, 300, 40], [100, 129, 500], [12, 4096, 33]])
    func tilesMatchTheExactProduct(_ shape: [Int]) throws {
        let (m, n, k) = (shape[0], shape[1], shape[2])
        let lda = k + 3, ldb = n + 5, ldc = n + 2
        var random = TestRandom(seed: UInt64(m * 13 + n * 7 + k))
        let a = random.values(m * lda, scale: 2), b = random.values(k * ldb, scale: 3)
        var c = [Float](repeating: .nan, count: m * ldc)
        let status = wp_gemm_f32_tiles(Int64(m), Int64(n), Int64(k), a, Int64(lda), b, Int64(ldb), &c, Int64(ldc), 0)
        guard GEMM.f16WeightProducts else {
            #expect(status == -1)
            #expect(c.allSatisfy { $0.isNaN })
            return
        }
        #expect(status == 0)
        let (reference, magnitude) = F16ProductTests.exactProduct(
            m, n, k, a: { i, p in Double(a[i * lda + p]) }, b: { p, j in Double(b[p * ldb + j]) })
        let values = (0..<m).flatMap { i in c[(i * ldc)..<(i * ldc + n)] }
        expectWithinReassociationBound(values, reference: reference, magnitude: magnitude, terms: k, "\(m)x\(n)x\(k)")
        #expect((0..<m).allSatisfy { i in c[(i * ldc + n)..<(i * ldc + ldc)].allSatisfy { $0.isNaN } }, "wrote past a row")
        // Accumulating adds to what C holds.
        var d = [Float](repeating: 1, count: m * ldc)
        #expect(wp_gemm_f32_tiles(Int64(m), Int64(n), Int64(k), a, Int64(lda), b, Int64(ldb), &d, Int64(ldc), 1) == 0)
        let accumulated = (0..<m).flatMap { i in d[(i * ldc)..<(i * ldc + n)] }
        expectWithinReassociationBound(
            accumulated, reference: reference.map { $0 + 1 }, magnitude: magnitude.map { $0 + 1 }, terms: k + 1, "accumulated")
    }

    /// Each row of C is computed on its own in a fixed order: a row's result does not depend on
    /// how many rows the product has or where the row sits (bit for bit).
    @Test func aRowDoesNotDependOnTheOtherRows() throws {
        let (m, n, k) = (17, 128, 700)
        var random = TestRandom(seed: 41)
        let a = random.values(m * k), b = random.values(k * n)
        guard GEMM.f16WeightProducts else { return }
        var whole = [Float](repeating: 0, count: m * n)
        #expect(wp_gemm_f32_tiles(Int64(m), Int64(n), Int64(k), a, Int64(k), b, Int64(n), &whole, Int64(n), 0) == 0)
        for row in [0, 5, 6, 16] {
            var one = [Float](repeating: 0, count: n)
            let status = a.withUnsafeBufferPointer {
                wp_gemm_f32_tiles(1, Int64(n), Int64(k), $0.baseAddress! + row * k, Int64(k), b, Int64(n), &one, Int64(n), 0)
            }
            #expect(status == 0)
            #expect(one.map(\.bitPattern) == whole[(row * n)..<(row * n + n)].map(\.bitPattern), "row \(row)")
        }
    }

    /// The engine's products take the tiles exactly where the rule says, on one thread and with
    /// neither operand transposed: there `GEMM.multiply` gives the tiles' result bit for bit (on
    /// AVX-512; elsewhere oneDNN's), and within the reassociation bound of the exact product.
    @Test(arguments: [[200, 64, 640], [160, 4096, 320], [200, 128, 640], [200, 64, 700], [640, 4096, 320]])
    func theEngineTakesTheTilesWhereTheRuleSays(_ shape: [Int]) throws {
        let (m, n, k) = (shape[0], shape[1], shape[2])
        let suits = GEMM.f32TilesSuit(m: m, n: n, k: k)
        #expect(suits == ([[200, 64, 640], [160, 4096, 320]] as [[Int]]).contains(shape), "the rule for \(shape)")
        var random = TestRandom(seed: UInt64(m + n + k))
        let a = random.values(m * k), b = random.values(k * n, scale: 2)
        var engine = [Float](repeating: .nan, count: m * n), tiles = engine, onednn = engine
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                engine.withUnsafeMutableBufferPointer { c in
                    Parallel.serially {
                        GEMM.multiply(m: m, n: n, k: k, a: a.baseAddress!, lda: k, b: b.baseAddress!, ldb: n, c: c.baseAddress!, ldc: n)
                    }
                }
            }
        }
        let tileStatus = wp_gemm_f32_tiles(Int64(m), Int64(n), Int64(k), a, Int64(k), b, Int64(n), &tiles, Int64(n), 0)
        #expect(wp_sgemm(0, 0, Int64(m), Int64(n), Int64(k), 1, a, Int64(k), b, Int64(n), 0, &onednn, Int64(n), 1) == 0)
        let expected = suits && GEMM.f16WeightProducts ? tiles : onednn
        #expect(tileStatus == (GEMM.f16WeightProducts ? 0 : -1))
        #expect(engine.map(\.bitPattern) == expected.map(\.bitPattern), "\(shape): not the route the rule names")
        let (reference, magnitude) = F16ProductTests.exactProduct(
            m, n, k, a: { i, p in Double(a[i * k + p]) }, b: { p, j in Double(b[p * n + j]) })
        expectWithinReassociationBound(engine, reference: reference, magnitude: magnitude, terms: k, "\(shape)")
    }

    /// Sizes and leading dimensions that do not fit are refused before anything is read; an
    /// empty depth gives zeros (or leaves C as it was when accumulating).
    @Test func badShapesAreRefusedAndAnEmptyDepthGivesZeros() {
        let a = [Float](repeating: 1, count: 64), b = a
        var c = [Float](repeating: 5, count: 64)
        #expect(wp_gemm_f32_tiles(-1, 4, 4, a, 4, b, 4, &c, 4, 0) == -3)
        #expect(wp_gemm_f32_tiles(4, 4, 4, a, 3, b, 4, &c, 4, 0) == -3)
        #expect(wp_gemm_f32_tiles(4, 4, 4, a, 4, b, 3, &c, 4, 0) == -3)
        #expect(wp_gemm_f32_tiles(4, 4, 4, a, 4, b, 4, &c, 3, 0) == -3)
        #expect(wp_gemm_f32_tiles(4, -4, 4, a, 4, b, 4, &c, 4, 0) == -3)
        #expect(c.allSatisfy { $0 == 5 })
        guard GEMM.f16WeightProducts else { return }
        #expect(wp_gemm_f32_tiles(4, 4, 0, a, 4, b, 4, &c, 4, 1) == 0)
        #expect(c.allSatisfy { $0 == 5 })
        #expect(wp_gemm_f32_tiles(4, 4, 0, a, 4, b, 4, &c, 4, 0) == 0)
        #expect(c[0..<16].allSatisfy { $0 == 0 } && c[16...].allSatisfy { $0 == 5 })
    }
}
