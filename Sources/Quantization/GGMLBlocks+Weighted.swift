import TensorCore

// ggml's importance-weighted quantisers (`quantize_row_*_impl` in ggml's `ggml-quants.c` with
// `quant_weights` set, ggml 0.9.8 as vendored by stable-diffusion.cpp 0.4.7): what
// `ggml_quantize_chunk` runs when it is given an importance matrix, as stable-diffusion.cpp's
// `convert` always does (a matrix of ones). Each function does the same f32 operations as the C
// code, in the same order and never fused (ggml-base is built for baseline x86-64, no FMA), so
// the blocks are identical. The weighted searches work on whole rows: Q4_0…Q5_1 weight every
// value by the row's mean square, the k-quants by their 256-value block's.

extension GGMLBlocks {
    /// Per-worker scratch of the weighted searches (no allocation per block).
    struct WeightedScratch {
        let floats: UnsafeMutablePointer<Float>
        let bytes: UnsafeMutablePointer<UInt8>
        static let floatCount = 32 + 16 + 16 + 16
        static let byteCount = 256 + 32 + 16 + 16

        init() {
            floats = .allocate(capacity: Self.floatCount)
            floats.initialize(repeating: 0, count: Self.floatCount)
            bytes = .allocate(capacity: Self.byteCount)
            bytes.initialize(repeating: 0, count: Self.byteCount)
        }

        func deallocate() {
            floats.deallocate()
            bytes.deallocate()
        }

        var weights: UnsafeMutablePointer<Float> { floats }
        var sw: UnsafeMutablePointer<Float> { floats + 32 }
        var scales: UnsafeMutablePointer<Float> { floats + 48 }
        var mins: UnsafeMutablePointer<Float> { floats + 64 }
        var L: UnsafeMutablePointer<UInt8> { bytes }
        var Laux: UnsafeMutablePointer<UInt8> { bytes + 256 }
        var Ls: UnsafeMutablePointer<UInt8> { bytes + 288 }
        var Lm: UnsafeMutablePointer<UInt8> { bytes + 304 }
    }

    /// ggml's `make_qx_quants` with `qw` set (`rmse_type` 1, the only one the weighted
    /// quantisers use): codes `L` in `0..<2·nmax`, returns the scale.
    static func makeQXQuantsWeighted(
        _ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>, _ qw: UnsafePointer<Float>
    ) -> Float {
        var max: Float = 0, amax: Float = 0
        for i in 0..<n {
            let ax = abs(x[i])
            if ax > amax { amax = ax; max = x[i] }
        }
        if amax < groupMaxEpsilon {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let lo = Int32(-nmax), hi = Int32(nmax - 1), offset = Int32(nmax)
        var iscale = Float(-nmax) / max
        var sumlx: Float = 0, suml2: Float = 0
        for i in 0..<n {
            let l = Swift.max(lo, Swift.min(hi, nearestInt(iscale * x[i])))
            L[i] = Int8(truncatingIfNeeded: l + offset)
            let w = qw[i], fl = Float(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        }
        var scale: Float = suml2 != 0 ? sumlx / suml2 : 0
        var best = scale * sumlx
        let fmax = Float(nmax)
        // Per-value products first (independent), then the sums in ggml's order.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * n) { buffer in
            let wxl = buffer.baseAddress!, wl2 = wxl + n
            for step in -9...9 where step != 0 {
                iscale = -(fmax + 0.1 * Float(step)) / max
                for i in 0..<n {
                    let fl = Float(Swift.max(lo, Swift.min(hi, nearestInt(iscale * x[i]))))
                    let w = qw[i]
                    wxl[i] = w * x[i] * fl
                    wl2[i] = w * fl * fl
                }
                sumlx = 0
                suml2 = 0
                for i in 0..<n {
                    sumlx += wxl[i]
                    suml2 += wl2[i]
                }
                if suml2 > 0, sumlx * sumlx > best * suml2 {
                    for i in 0..<n { L[i] = Int8(truncatingIfNeeded: offset + Swift.max(lo, Swift.min(hi, nearestInt(iscale * x[i])))) }
                    scale = sumlx / suml2
                    best = scale * sumlx
                }
            }
        }
        return scale
    }

    /// ggml's `make_qkx3_quants` with weights given and `use_mad` false: codes `L` in
    /// `0...nmax`; returns the scale and `the_min` (minus the block's offset).
    static func makeQKX3Quants(
        _ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>,
        _ L: UnsafeMutablePointer<UInt8>, _ Laux: UnsafeMutablePointer<UInt8>, rmin: Float, rdelta: Float, nstep: Int
    ) -> (scale: Float, theMin: Float) {
        var min = x[0], max = x[0]
        var sumW = weights[0]
        var sumX = sumW * x[0]
        for i in 1..<n {
            if x[i] < min { min = x[i] }
            if x[i] > max { max = x[i] }
            let w = weights[i]
            sumW += w
            sumX += w * x[i]
        }
        if min > 0 { min = 0 }
        if max <= min {
            for i in 0..<n { L[i] = 0 }
            return (0, -min)
        }
        let fmax = Float(nmax), top = Int32(nmax)
        var iscale = fmax / (max - min)
        var scale = 1 / iscale
        var bestMAD: Float = 0
        for i in 0..<n {
            let l = Swift.max(0, Swift.min(top, nearestInt(iscale * (x[i] - min))))
            L[i] = UInt8(truncatingIfNeeded: l)
            let diff = scale * Float(l) + min - x[i]
            bestMAD += weights[i] * (diff * diff)
        }
        if nstep < 1 { return (scale, -min) }
        // Per-value products first (independent, so the compiler may vectorise them), then the
        // sums in ggml's order: the same f32 operations on the same operands.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * n) { buffer in
            let wl = buffer.baseAddress!, wl2 = wl + n, wlx = wl2 + n
            for step in 0...nstep {
                iscale = (rmin + rdelta * Float(step) + fmax) / (max - min)
                for i in 0..<n {
                    let l = Swift.max(0, Swift.min(top, nearestInt(iscale * (x[i] - min))))
                    Laux[i] = UInt8(truncatingIfNeeded: l)
                    let a = weights[i] * Float(l)
                    wl[i] = a
                    wl2[i] = a * Float(l)
                    wlx[i] = a * x[i]
                }
                var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
                for i in 0..<n {
                    sumL += wl[i]
                    sumL2 += wl2[i]
                    sumXL += wlx[i]
                }
                let D = sumW * sumL2 - sumL * sumL
                if D > 0 {
                    var thisScale = (sumW * sumXL - sumX * sumL) / D
                    var thisMin = (sumL2 * sumX - sumL * sumXL) / D
                    if thisMin > 0 {
                        thisMin = 0
                        thisScale = sumXL / sumL2
                    }
                    for i in 0..<n {
                        let diff = thisScale * Float(Laux[i]) + thisMin - x[i]
                        wl[i] = weights[i] * (diff * diff)
                    }
                    var mad: Float = 0
                    for i in 0..<n { mad += wl[i] }
                    if mad < bestMAD {
                        for i in 0..<n { L[i] = Laux[i] }
                        bestMAD = mad
                        scale = thisScale
                        min = thisMin
                    }
                }
            }
        }
        return (scale, -min)
    }

    /// ggml's `make_qp_quants`: codes of non-negative values `x` (a block's sub-block scales or
    /// mins) in `0...nmax` under `weights`; returns the super-scale.
    static func makeQPQuants(
        _ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<UInt8>, _ weights: UnsafePointer<Float>
    ) -> Float {
        var max: Float = 0
        for i in 0..<n { max = Swift.max(max, x[i]) }
        if max < groupMaxEpsilon {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let fmax = Float(nmax), top = Int32(nmax)
        var iscale = fmax / max
        for i in 0..<n { L[i] = UInt8(truncatingIfNeeded: nearestInt(iscale * x[i])) }
        let scale = 1 / iscale
        var bestMSE: Float = 0
        for i in 0..<n {
            let diff = x[i] - scale * Float(L[i])
            bestMSE += weights[i] * diff * diff
        }
        for step in -4...4 where step != 0 {
            let iscaleStep = (0.1 * Float(step) + fmax) / max
            let scaleStep = 1 / iscaleStep
            var mse: Float = 0
            for i in 0..<n {
                let l = Swift.min(top, nearestInt(iscaleStep * x[i]))
                let diff = x[i] - scaleStep * Float(l)
                mse += weights[i] * diff * diff
            }
            if mse < bestMSE {
                bestMSE = mse
                iscale = iscaleStep
            }
        }
        var sumlx: Float = 0, suml2: Float = 0
        for i in 0..<n {
            let l = Swift.min(top, nearestInt(iscale * x[i]))
            L[i] = UInt8(truncatingIfNeeded: l)
            let w = weights[i], fl = Float(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        }
        for _ in 0..<5 {
            var changed = 0
            for i in 0..<n {
                let w = weights[i], li = Float(L[i])
                var slx = sumlx - w * x[i] * li
                var sl2 = suml2 - w * li * li
                if slx > 0, sl2 > 0 {
                    let newL = Swift.min(top, nearestInt(x[i] * sl2 / slx))
                    if newL != Int32(L[i]) {
                        let fl = Float(newL)
                        slx += w * x[i] * fl
                        sl2 += w * fl * fl
                        if slx * slx * suml2 > sumlx * sumlx * sl2 {
                            L[i] = UInt8(truncatingIfNeeded: newL)
                            sumlx = slx
                            suml2 = sl2
                            changed += 1
                        }
                    }
                }
            }
            if changed == 0 { break }
        }
        return suml2 > 0 ? sumlx / suml2 : 0
    }

    /// `sum_x2` over `n` values, in order.
    @inline(__always) static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var s: Float = 0
        for j in 0..<n { s += x[j] * x[j] }
        return s
    }

    // MARK: 32-value blocks (sigma2 over the whole row)

    static func weightedRowQ4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let sigma2 = sumOfSquares(x, n) / Float(n)
        let weight = s.weights
        let L = UnsafeMutableRawPointer(s.L).assumingMemoryBound(to: Int8.self)
        for ib in 0..<(n / 32) {
            let xb = x + 32 * ib, q = qw + 32 * ib, yb = y + 18 * ib
            for j in 0..<32 { weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).squareRoot() }
            let d = makeQXQuantsWeighted(32, 8, xb, L, weight)
            storeHalf(d, yb, 0)
            for j in 0..<16 {
                yb.storeBytes(of: UInt8(bitPattern: L[j] | L[j + 16] << 4), toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }

    static func weightedRowQ5_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let sigma2 = sumOfSquares(x, n) / Float(n)
        let weight = s.weights
        let L = UnsafeMutableRawPointer(s.L).assumingMemoryBound(to: Int8.self)
        for ib in 0..<(n / 32) {
            let xb = x + 32 * ib, q = qw + 32 * ib, yb = y + 22 * ib
            for j in 0..<32 { weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).squareRoot() }
            let d = makeQXQuantsWeighted(32, 16, xb, L, weight)
            storeHalf(d, yb, 0)
            var qh: UInt32 = 0
            for j in 0..<16 {
                let x0 = UInt8(bitPattern: L[j]), x1 = UInt8(bitPattern: L[j + 16])
                yb.storeBytes(of: (x0 & 0x0F) | (x1 & 0x0F) << 4, toByteOffset: 6 + j, as: UInt8.self)
                qh |= UInt32((x0 & 0x10) >> 4) << UInt32(j)
                qh |= UInt32((x1 & 0x10) >> 4) << UInt32(j + 16)
            }
            yb.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
        }
    }

    static func weightedRowQ4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let sigma2 = sumOfSquares(x, n) / Float(n)
        let weight = s.weights, L = s.L, Laux = s.Laux
        for ib in 0..<(n / 32) {
            let xb = x + 32 * ib, q = qw + 32 * ib, yb = y + 20 * ib
            for j in 0..<32 { weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).squareRoot() }
            let (d, theMin) = makeQKX3Quants(32, 15, xb, weight, L, Laux, rmin: -0.9, rdelta: 0.05, nstep: 36)
            storeHalf(d, yb, 0)
            storeHalf(-theMin, yb, 2)
            for j in 0..<16 { yb.storeBytes(of: L[j] | L[j + 16] << 4, toByteOffset: 4 + j, as: UInt8.self) }
        }
    }

    static func weightedRowQ5_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let sigma2 = sumOfSquares(x, n) / Float(n)
        let weight = s.weights, L = s.L, Laux = s.Laux
        for ib in 0..<(n / 32) {
            let xb = x + 32 * ib, q = qw + 32 * ib, yb = y + 24 * ib
            for j in 0..<32 { weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).squareRoot() }
            let (d, theMin) = makeQKX3Quants(32, 31, xb, weight, L, Laux, rmin: -0.9, rdelta: 0.05, nstep: 36)
            storeHalf(d, yb, 0)
            storeHalf(-theMin, yb, 2)
            var qh: UInt32 = 0
            for j in 0..<16 {
                let x0 = L[j], x1 = L[j + 16]
                yb.storeBytes(of: (x0 & 0x0F) | (x1 & 0x0F) << 4, toByteOffset: 8 + j, as: UInt8.self)
                qh |= UInt32((x0 & 0x10) >> 4) << UInt32(j)
                qh |= UInt32((x1 & 0x10) >> 4) << UInt32(j + 16)
            }
            yb.storeBytes(of: qh.littleEndian, toByteOffset: 4, as: UInt32.self)
        }
    }

    // MARK: 256-value blocks (sigma2 over each block)

    static func weightedRowQ2_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let weight = s.weights, sw = s.sw, scales = s.scales, mins = s.mins
        let L = s.L, Laux = s.Laux, Ls = s.Ls, Lm = s.Lm
        for i in 0..<(n / 256) {
            let xb = x + 256 * i, yb = y + 84 * i
            let sigma2 = sumOfSquares(xb, 256) / 256
            for j in 0..<16 {
                let q = qw + 256 * i + 16 * j
                for l in 0..<16 { weight[l] = q[l] * (sigma2 + xb[16 * j + l] * xb[16 * j + l]).squareRoot() }
                var sum: Float = 0
                for l in 0..<16 { sum += weight[l] }
                sw[j] = sum
                let (scale, theMin) = makeQKX3Quants(16, 3, xb + 16 * j, weight, L + 16 * j, Laux, rmin: -0.9, rdelta: 0.05, nstep: 36)
                scales[j] = scale
                mins[j] = theMin
            }
            let dm = makeQPQuants(16, 15, scales, Ls, sw)
            let mm = makeQPQuants(16, 15, mins, Lm, sw)
            storeHalf(dm, yb, 80)
            storeHalf(mm, yb, 82)
            let dAll = fp16Round(dm), mAll = fp16Round(mm)
            for j in 0..<16 {
                let sc = Ls[j] | Lm[j] << 4
                yb.storeBytes(of: sc, toByteOffset: j, as: UInt8.self)
                let d = dAll * Float(sc & 0x0F)
                if d == 0 { continue }
                let m = mAll * Float(sc >> 4)
                for ii in 0..<16 {
                    let l = nearestInt((xb[16 * j + ii] + m) / d)
                    L[16 * j + ii] = UInt8(truncatingIfNeeded: Swift.max(0, Swift.min(3, l)))
                }
            }
            for j in stride(from: 0, to: 256, by: 128) {
                for l in 0..<32 {
                    let q = L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6
                    yb.storeBytes(of: q, toByteOffset: 16 + j / 4 + l, as: UInt8.self)
                }
            }
        }
    }

    static func weightedRowQ3_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let weight = s.weights, sw = s.sw, scales = s.scales
        let L = UnsafeMutableRawPointer(s.L).assumingMemoryBound(to: Int8.self)
        let Ls = UnsafeMutableRawPointer(s.Ls).assumingMemoryBound(to: Int8.self)
        let packed = s.Lm  // 12 scale bytes, then 32 bytes of hmask in Laux
        let hmask = s.Laux
        for i in 0..<(n / 256) {
            let xb = x + 256 * i, yb = y + 110 * i
            let sigma2 = 2 * sumOfSquares(xb, 256) / 256
            for j in 0..<16 {
                let q = qw + 256 * i + 16 * j
                for l in 0..<16 { weight[l] = q[l] * (sigma2 + xb[16 * j + l] * xb[16 * j + l]).squareRoot() }
                var sum: Float = 0
                for l in 0..<16 { sum += weight[l] }
                sw[j] = sum
                scales[j] = makeQXQuantsWeighted(16, 4, xb + 16 * j, L + 16 * j, weight)
            }
            for j in 0..<12 { packed[j] = 0 }
            let dBlock = makeQXQuantsWeighted(16, 32, scales, Ls, sw)
            for j in 0..<16 {
                var l = Int32(Ls[j])
                if j < 8 {
                    packed[j] = UInt8(truncatingIfNeeded: l & 0x0F)
                } else {
                    packed[j - 8] |= UInt8(truncatingIfNeeded: (l & 0x0F) << 4)
                }
                l >>= 4
                packed[j % 4 + 8] |= UInt8(truncatingIfNeeded: l << Int32(2 * (j / 4)))
            }
            storeHalf(dBlock, yb, 108)
            let dAll = fp16Round(dBlock)
            for j in 0..<16 {
                var sc = Int8(truncatingIfNeeded: j < 8 ? packed[j] & 0x0F : packed[j - 8] >> 4)
                sc = (sc | Int8(truncatingIfNeeded: ((packed[8 + j % 4] >> UInt8(2 * (j / 4))) & 3) << 4)) &- 32
                let d = dAll * Float(sc)
                if d == 0 { continue }
                for ii in 0..<16 {
                    let l = nearestInt(xb[16 * j + ii] / d)
                    L[16 * j + ii] = Int8(truncatingIfNeeded: Swift.max(-4, Swift.min(3, l)) + 4)
                }
            }
            for j in 0..<32 { hmask[j] = 0 }
            var m = 0
            var hm: UInt8 = 1
            for j in 0..<256 {
                if L[j] > 3 {
                    hmask[m] |= hm
                    L[j] -= 4
                }
                m += 1
                if m == 32 { m = 0; hm = hm &<< 1 }
            }
            for j in 0..<32 { yb.storeBytes(of: hmask[j], toByteOffset: j, as: UInt8.self) }
            for j in stride(from: 0, to: 256, by: 128) {
                for l in 0..<32 {
                    let q = UInt8(bitPattern: L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6)
                    yb.storeBytes(of: q, toByteOffset: 32 + j / 4 + l, as: UInt8.self)
                }
            }
            for j in 0..<12 { yb.storeBytes(of: packed[j], toByteOffset: 96 + j, as: UInt8.self) }
        }
    }

    /// The shared body of the weighted Q4_K / Q5_K: sub-block searches, scales packed at
    /// `yb + 4`, d and dmin at `yb`, and the final codes in `L`.
    @inline(__always)
    static func weightedKWithMins(
        _ xb: UnsafePointer<Float>, _ yb: UnsafeMutableRawPointer, _ qw: UnsafePointer<Float>, nmax: Int, clampScales: Bool,
        _ s: WeightedScratch
    ) {
        let weights = s.weights, sw = s.sw, scales = s.scales, mins = s.mins
        let L = s.L, Laux = s.Laux, Ls = s.Ls, Lm = s.Lm
        let sigma2 = 2 * sumOfSquares(xb, 256) / 256
        for j in 0..<8 {
            let q = qw + 32 * j
            for l in 0..<32 { weights[l] = q[l] * (sigma2 + xb[32 * j + l] * xb[32 * j + l]).squareRoot() }
            var sum: Float = 0
            for l in 0..<32 { sum += weights[l] }
            sw[j] = sum
            let (scale, theMin) = makeQKX3Quants(32, nmax, xb + 32 * j, weights, L + 32 * j, Laux, rmin: -0.9, rdelta: 0.05, nstep: 36)
            scales[j] = scale
            mins[j] = theMin
        }
        let dBlock = makeQPQuants(8, 63, scales, Ls, sw)
        let mBlock = makeQPQuants(8, 63, mins, Lm, sw)
        let packed = yb + 4
        for j in 0..<12 { packed.storeBytes(of: 0, toByteOffset: j, as: UInt8.self) }
        for j in 0..<8 {
            var ls = Ls[j], lm = Lm[j]
            if clampScales {
                ls = Swift.min(63, ls)
                lm = Swift.min(63, lm)
            }
            if j < 4 {
                packed.storeBytes(of: ls, toByteOffset: j, as: UInt8.self)
                packed.storeBytes(of: lm, toByteOffset: j + 4, as: UInt8.self)
            } else {
                packed.storeBytes(of: (ls & 0x0F) | (lm & 0x0F) << 4, toByteOffset: j + 4, as: UInt8.self)
                let a = packed.load(fromByteOffset: j - 4, as: UInt8.self) | (ls >> 4) << 6
                packed.storeBytes(of: a, toByteOffset: j - 4, as: UInt8.self)
                let b = packed.load(fromByteOffset: j, as: UInt8.self) | (lm >> 4) << 6
                packed.storeBytes(of: b, toByteOffset: j, as: UInt8.self)
            }
        }
        storeHalf(dBlock, yb, 0)
        storeHalf(mBlock, yb, 2)
        let dAll = fp16Round(dBlock), mAll = fp16Round(mBlock), top = Int32(nmax)
        for j in 0..<8 {
            let (sc, m) = scaleMin(UnsafeRawPointer(packed), j)
            let d = dAll * Float(sc)
            if d == 0 { continue }
            let dm = mAll * Float(m)
            for ii in 0..<32 {
                let l = nearestInt((xb[32 * j + ii] + dm) / d)
                L[32 * j + ii] = UInt8(truncatingIfNeeded: Swift.max(0, Swift.min(top, l)))
            }
        }
    }

    static func weightedRowQ4_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let L = s.L
        for i in 0..<(n / 256) {
            let yb = y + 144 * i
            weightedKWithMins(x + 256 * i, yb, qw + 256 * i, nmax: 15, clampScales: false, s)
            for j in stride(from: 0, to: 256, by: 64) {
                for l in 0..<32 { yb.storeBytes(of: L[j + l] | L[j + l + 32] << 4, toByteOffset: 16 + j / 2 + l, as: UInt8.self) }
            }
        }
    }

    static func weightedRowQ5_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let L = s.L, qh = s.Laux
        for i in 0..<(n / 256) {
            let yb = y + 176 * i
            weightedKWithMins(x + 256 * i, yb, qw + 256 * i, nmax: 31, clampScales: true, s)
            for j in 0..<32 { qh[j] = 0 }
            var m1: UInt8 = 1, m2: UInt8 = 2
            for base in stride(from: 0, to: 256, by: 64) {
                for j in 0..<32 {
                    var l1 = L[base + j]
                    if l1 > 15 { l1 -= 16; qh[j] |= m1 }
                    var l2 = L[base + j + 32]
                    if l2 > 15 { l2 -= 16; qh[j] |= m2 }
                    yb.storeBytes(of: l1 | l2 << 4, toByteOffset: 48 + base / 2 + j, as: UInt8.self)
                }
                m1 = m1 &<< 2
                m2 = m2 &<< 2
            }
            for j in 0..<32 { yb.storeBytes(of: qh[j], toByteOffset: 16 + j, as: UInt8.self) }
        }
    }

    static func weightedRowQ6_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ n: Int, _ qw: UnsafePointer<Float>, _ s: WeightedScratch) {
        let L = UnsafeMutableRawPointer(s.L).assumingMemoryBound(to: Int8.self)
        let scales = s.scales
        for i in 0..<(n / 256) {
            let xb = x + 256 * i, yb = y + 210 * i
            var maxScale: Float = 0, maxAbsScale: Float = 0
            for ib in 0..<16 {
                let scale = makeQXQuantsWeighted(16, 32, xb + 16 * ib, L + 16 * ib, qw + 256 * i + 16 * ib)
                scales[ib] = scale
                let a = abs(scale)
                if a > maxAbsScale { maxAbsScale = a; maxScale = scale }
            }
            if maxAbsScale < groupMaxEpsilon {
                yb.initializeMemory(as: UInt8.self, repeating: 0, count: 210)
                continue
            }
            finishQ6_K(xb, yb, L, scales, maxScale: maxScale)
        }
    }

    /// The end of Q6_K, shared by the reference and the weighted quantiser: super-scale,
    /// int8 sub-scales, requantisation and packing.
    @inline(__always)
    static func finishQ6_K(
        _ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ L: UnsafeMutablePointer<Int8>, _ scales: UnsafePointer<Float>,
        maxScale: Float
    ) {
        let iscale = -128 / maxScale
        storeHalf(1 / iscale, y, 208)
        let dAll = fp16Round(1 / iscale)
        for j in 0..<16 {
            let sc = Int8(truncatingIfNeeded: Swift.min(127, nearestInt(iscale * scales[j])))
            y.storeBytes(of: sc, toByteOffset: 192 + j, as: Int8.self)
            let d = dAll * Float(sc)
            if d == 0 { continue }
            for i in 0..<16 {
                let l = nearestInt(x[16 * j + i] / d)
                L[16 * j + i] = Int8(truncatingIfNeeded: Swift.max(-32, Swift.min(31, l)) + 32)
            }
        }
        for j in stride(from: 0, to: 256, by: 128) {
            for l in 0..<32 {
                let q1 = UInt8(bitPattern: L[j + l]) & 0x0F, q2 = UInt8(bitPattern: L[j + l + 32]) & 0x0F
                let q3 = UInt8(bitPattern: L[j + l + 64]) & 0x0F, q4 = UInt8(bitPattern: L[j + l + 96]) & 0x0F
                y.storeBytes(of: q1 | q3 << 4, toByteOffset: j / 2 + l, as: UInt8.self)
                y.storeBytes(of: q2 | q4 << 4, toByteOffset: j / 2 + l + 32, as: UInt8.self)
                let h =
                    UInt8(bitPattern: L[j + l]) >> 4 | (UInt8(bitPattern: L[j + l + 32]) >> 4) << 2
                    | (UInt8(bitPattern: L[j + l + 64]) >> 4) << 4 | (UInt8(bitPattern: L[j + l + 96]) >> 4) << 6
                y.storeBytes(of: h, toByteOffset: 128 + j / 4 + l, as: UInt8.self)
            }
        }
    }

    typealias WeightedRowKernel = (UnsafePointer<Float>, UnsafeMutableRawPointer, Int, UnsafePointer<Float>, WeightedScratch) -> Void

    /// The weighted row kernel of `type`, or nil when ggml ignores the importance (Q8_0, floats).
    static func weightedKernel(_ type: GGMLType) -> WeightedRowKernel? {
        switch type {
        case .q4_0: weightedRowQ4_0
        case .q4_1: weightedRowQ4_1
        case .q5_0: weightedRowQ5_0
        case .q5_1: weightedRowQ5_1
        case .q2_K: weightedRowQ2_K
        case .q3_K: weightedRowQ3_K
        case .q4_K: weightedRowQ4_K
        case .q5_K: weightedRowQ5_K
        case .q6_K: weightedRowQ6_K
        default: nil
        }
    }
}
