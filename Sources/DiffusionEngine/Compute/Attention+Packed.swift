/// The two products of attention written for its shapes, which a general GEMM handles poorly:
/// `q kᵀ` has an inner dimension of one head (40 floats in SD 1.5's largest attention), so a
/// BLAS kernel stores and reloads every score after 40 multiply-adds; `p v` is 40 floats wide, so
/// BLAS spends as long packing the scores as multiplying them. Here each head's keys are packed
/// once, transposed (`[d][keys]`), and its values once, padded to 16 floats (`[keys][dPad]`);
/// a block of 4 query rows then keeps 8 (for `q kᵀ`) or `4 · dPad / 16` (for `p v`) 16-lane
/// accumulators in registers for the whole inner loop and reads the scores in place.
extension Attention {
    typealias Lanes = SIMD16<Float>

    /// Whether ``forward`` uses these kernels unless told otherwise: in builds for AVX-512,
    /// whose 32 vector registers hold the accumulators; narrower builds use BLAS.
    #if WEIGHTPACK_ENGINE_AVX512
    static let usesPackedKernels = true
    #else
    static let usesPackedKernels = false
    #endif

    /// Keys rounded up to the 32 the score kernel computes at a time.
    @inline(__always)
    static func paddedKeys(_ keys: Int) -> Int { (keys + 31) / 32 * 32 }

    /// A head's width rounded up to whole 16-lane vectors.
    @inline(__always)
    static func paddedWidth(_ d: Int) -> Int { (d + 15) / 16 * 16 }

    /// Floats one worker needs: the scores of a chunk, the packed keys and the packed values.
    static func packedScratchCount(keys: Int, headDimension d: Int, chunk: Int) -> Int {
        let kp = paddedKeys(keys)
        return chunk * kp + d * kp + keys * paddedWidth(d)
    }

    /// `kt[c][j] = k[j][c]` for the head's `d` columns, zero for `j` in `keys..<paddedKeys`.
    static func packKeys(_ k: UnsafePointer<Float>, stride: Int, keys: Int, d: Int, into kt: UnsafeMutablePointer<Float>) {
        let kp = paddedKeys(keys)
        for j in 0..<keys {
            let row = k + j * stride
            for c in 0..<d { kt[c * kp + j] = row[c] }
        }
        if kp > keys { for c in 0..<d { (kt + c * kp + keys).update(repeating: 0, count: kp - keys) } }
    }

    /// `vp[j][c] = v[j][c]`, zero for `c` in `d..<paddedWidth`.
    static func packValues(_ v: UnsafePointer<Float>, stride: Int, keys: Int, d: Int, into vp: UnsafeMutablePointer<Float>) {
        let dp = paddedWidth(d)
        for j in 0..<keys {
            (vp + j * dp).update(from: v + j * stride, count: d)
            if dp > d { (vp + j * dp + d).update(repeating: 0, count: dp - d) }
        }
    }

    /// `scores[i][j] = scale * q[i] · kt[·][j]` for `rows` query rows (row `i` at
    /// `q + i * qStride`) and all padded keys; `scores` has rows of `paddedKeys(keys)` floats.
    /// Blocks of 4 rows x 64 keys: 16 accumulators, 4 vector loads and 4 broadcasts per 16
    /// fused multiply-adds.
    static func packedScores(
        q: UnsafePointer<Float>, qStride: Int, rows: Int, kt: UnsafePointer<Float>,
        keys: Int, d: Int, scale: Float, into scores: UnsafeMutablePointer<Float>
    ) {
        let kp = paddedKeys(keys)
        let rowBytes = kp &* 4
        let s = Lanes(repeating: scale)
        @inline(__always) func store(_ value: Lanes, _ target: UnsafeMutableRawPointer, _ offset: Int) {
            target.storeBytes(of: value * s, toByteOffset: offset, as: Lanes.self)
        }
        var i = 0
        while i < rows {
            let q0 = q + i * qStride
            let q1 = i + 1 < rows ? q0 + qStride : q0, q2 = i + 2 < rows ? q0 + 2 * qStride : q0, q3 = i + 3 < rows ? q0 + 3 * qStride : q0
            let t0 = UnsafeMutableRawPointer(scores + i * kp)
            var j = 0
            while j < kp {
                var a00 = Lanes(), a01 = Lanes(), a02 = Lanes(), a03 = Lanes()
                var a10 = Lanes(), a11 = Lanes(), a12 = Lanes(), a13 = Lanes()
                var a20 = Lanes(), a21 = Lanes(), a22 = Lanes(), a23 = Lanes()
                var a30 = Lanes(), a31 = Lanes(), a32 = Lanes(), a33 = Lanes()
                var k = UnsafeRawPointer(kt + j)
                let wide = j + 64 <= kp
                for c in 0..<d {
                    let k0 = k.loadUnaligned(as: Lanes.self), k1 = k.loadUnaligned(fromByteOffset: 64, as: Lanes.self)
                    let k2 = wide ? k.loadUnaligned(fromByteOffset: 128, as: Lanes.self) : Lanes()
                    let k3 = wide ? k.loadUnaligned(fromByteOffset: 192, as: Lanes.self) : Lanes()
                    let b0 = Lanes(repeating: q0[c]), b1 = Lanes(repeating: q1[c])
                    let b2 = Lanes(repeating: q2[c]), b3 = Lanes(repeating: q3[c])
                    a00 = a00.addingProduct(b0, k0); a01 = a01.addingProduct(b0, k1); a02 = a02.addingProduct(b0, k2); a03 = a03.addingProduct(b0, k3)
                    a10 = a10.addingProduct(b1, k0); a11 = a11.addingProduct(b1, k1); a12 = a12.addingProduct(b1, k2); a13 = a13.addingProduct(b1, k3)
                    a20 = a20.addingProduct(b2, k0); a21 = a21.addingProduct(b2, k1); a22 = a22.addingProduct(b2, k2); a23 = a23.addingProduct(b2, k3)
                    a30 = a30.addingProduct(b3, k0); a31 = a31.addingProduct(b3, k1); a32 = a32.addingProduct(b3, k2); a33 = a33.addingProduct(b3, k3)
                    k += rowBytes
                }
                // Rows past the end were computed from row 0 and are not stored.
                let offset = j &* 4
                for r in 0..<min(4, rows - i) {
                    let (x0, x1, x2, x3) =
                        r == 0 ? (a00, a01, a02, a03) : r == 1 ? (a10, a11, a12, a13) : r == 2 ? (a20, a21, a22, a23) : (a30, a31, a32, a33)
                    let t = t0 + r &* rowBytes
                    store(x0, t, offset); store(x1, t, offset + 64)
                    if wide { store(x2, t, offset + 128); store(x3, t, offset + 192) }
                }
                j += wide ? 64 : 32
            }
            i += 4
        }
    }

    /// `out[i] = Σ_j p[i][j] vp[j]` for `rows` rows of probabilities (rows of
    /// `paddedKeys(keys)` floats, of which the first `keys` count), written to the first `d`
    /// floats of `out + i * outStride`. Blocks of 8 rows x 32 columns (16 accumulators, 8
    /// broadcasts and 2 vector loads per 16 fused multiply-adds), then 8 rows x 16.
    static func packedWeightedSum(
        p: UnsafePointer<Float>, rows: Int, vp: UnsafePointer<Float>, keys: Int, d: Int,
        into out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        let kp = paddedKeys(keys), dp = paddedWidth(d)
        let vRowBytes = dp &* 4
        @inline(__always) func store(_ value: Lanes, row: Int, column: Int) {
            let target = out + row * outStride + column
            let count = min(16, d - column)
            if count == 16 {
                UnsafeMutableRawPointer(target).storeBytes(of: value, as: Lanes.self)
            } else if count > 0 {
                for l in 0..<count { target[l] = value[l] }
            }
        }
        var i = 0
        while i < rows {
            // Rows past the end repeat the last row and are not stored.
            let last = rows - 1
            let r = (0..<8).map { p + min(i + $0, last) * kp }
            let (p0, p1, p2, p3, p4, p5, p6, p7) = (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
            let valid = min(8, rows - i)
            var c0 = 0
            while c0 < dp {
                var v = UnsafeRawPointer(vp + c0)
                if c0 + 32 <= dp {
                    var a0 = Lanes(), a1 = Lanes(), a2 = Lanes(), a3 = Lanes(), a4 = Lanes(), a5 = Lanes(), a6 = Lanes(), a7 = Lanes()
                    var e0 = Lanes(), e1 = Lanes(), e2 = Lanes(), e3 = Lanes(), e4 = Lanes(), e5 = Lanes(), e6 = Lanes(), e7 = Lanes()
                    for j in 0..<keys {
                        let x = v.loadUnaligned(as: Lanes.self), y = v.loadUnaligned(fromByteOffset: 64, as: Lanes.self)
                        let b0 = Lanes(repeating: p0[j]), b1 = Lanes(repeating: p1[j]), b2 = Lanes(repeating: p2[j]), b3 = Lanes(repeating: p3[j])
                        a0 = a0.addingProduct(b0, x); e0 = e0.addingProduct(b0, y)
                        a1 = a1.addingProduct(b1, x); e1 = e1.addingProduct(b1, y)
                        a2 = a2.addingProduct(b2, x); e2 = e2.addingProduct(b2, y)
                        a3 = a3.addingProduct(b3, x); e3 = e3.addingProduct(b3, y)
                        let b4 = Lanes(repeating: p4[j]), b5 = Lanes(repeating: p5[j]), b6 = Lanes(repeating: p6[j]), b7 = Lanes(repeating: p7[j])
                        a4 = a4.addingProduct(b4, x); e4 = e4.addingProduct(b4, y)
                        a5 = a5.addingProduct(b5, x); e5 = e5.addingProduct(b5, y)
                        a6 = a6.addingProduct(b6, x); e6 = e6.addingProduct(b6, y)
                        a7 = a7.addingProduct(b7, x); e7 = e7.addingProduct(b7, y)
                        v += vRowBytes
                    }
                    let first = [a0, a1, a2, a3, a4, a5, a6, a7], second = [e0, e1, e2, e3, e4, e5, e6, e7]
                    for k in 0..<valid {
                        store(first[k], row: i + k, column: c0)
                        store(second[k], row: i + k, column: c0 + 16)
                    }
                    c0 += 32
                } else {
                    var a0 = Lanes(), a1 = Lanes(), a2 = Lanes(), a3 = Lanes(), a4 = Lanes(), a5 = Lanes(), a6 = Lanes(), a7 = Lanes()
                    for j in 0..<keys {
                        let x = v.loadUnaligned(as: Lanes.self)
                        a0 = a0.addingProduct(Lanes(repeating: p0[j]), x); a1 = a1.addingProduct(Lanes(repeating: p1[j]), x)
                        a2 = a2.addingProduct(Lanes(repeating: p2[j]), x); a3 = a3.addingProduct(Lanes(repeating: p3[j]), x)
                        a4 = a4.addingProduct(Lanes(repeating: p4[j]), x); a5 = a5.addingProduct(Lanes(repeating: p5[j]), x)
                        a6 = a6.addingProduct(Lanes(repeating: p6[j]), x); a7 = a7.addingProduct(Lanes(repeating: p7[j]), x)
                        v += vRowBytes
                    }
                    let first = [a0, a1, a2, a3, a4, a5, a6, a7]
                    for k in 0..<valid { store(first[k], row: i + k, column: c0) }
                    c0 += 16
                }
            }
            i += 8
        }
    }
}
