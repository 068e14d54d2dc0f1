import TensorCore

// ggml's reference quantisers, one block at a time. Each function does exactly the f32
// operations of `quantize_row_*_ref` in ggml's `ggml-quants.c` (ggml-org/ggml, as vendored by
// stable-diffusion.cpp 0.4.7), in the same order and never fused, so the codes are identical.
// The C code is built for baseline x86-64 there (no FMA), which is what makes this possible.

extension GGMLBlocks {
    /// Quantises `count` f32 values (a whole number of blocks) into `type`'s blocks at `output`
    /// as ggml's reference quantiser does, and measures the error of the result (the same as
    /// ``quantize(_:rows:rowLength:type:importance:into:)`` with one row and no importance).
    ///
    /// - Throws: ``QuantizationError/Code/unsupportedDType`` for a type WeightPack does not write,
    ///   ``QuantizationError/Code/invalidLayout`` when `count` is not a whole number of blocks,
    ///   ``QuantizationError/Code/nonFinite`` for NaN or infinite values (ggml would write
    ///   meaningless codes).
    /// - Complexity: O(count) (the k-quants' searches are a constant factor of about 20–40).
    @discardableResult
    public static func quantize(
        _ values: UnsafePointer<Float>, count: Int, type: GGMLType, into output: UnsafeMutableRawPointer
    ) throws(QuantizationError) -> ErrorAccumulator {
        try quantize(values, rows: count == 0 ? 0 : 1, rowLength: count, type: type, importance: nil, into: output)
    }

    // MARK: C semantics

    /// ggml's `nearest_int`: round to nearest even through the 1.5·2^23 trick (same bits for
    /// any input, including those outside its asserted range).
    @inline(__always) static func nearestInt(_ f: Float) -> Int32 {
        let v = f + 12_582_912
        return Int32(bitPattern: v.bitPattern & 0x007F_FFFF) - 0x0040_0000
    }

    /// A C conversion of a float to an integer type as x86-64's `cvttss2si` does it: truncation,
    /// and `INT32_MIN` for NaN and values out of range; narrower types keep the low bits.
    @inline(__always) static func truncatedInt32(_ f: Float) -> Int32 {
        guard f.isFinite, f > -2_147_483_904, f < 2_147_483_648 else { return Int32.min }
        return Int32(f.rounded(.towardZero))
    }

    @inline(__always) static func storeHalf(_ v: Float, _ p: UnsafeMutableRawPointer, _ offset: Int) {
        p.storeBytes(of: v.halfBits.littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    @inline(__always) static func fp16Round(_ v: Float) -> Float { Float(halfBits: v.halfBits) }

    // MARK: 32-value blocks

    static func quantizeQ4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0, max: Float = 0
        for j in 0..<32 where amax < abs(x[j]) { amax = abs(x[j]); max = x[j] }
        let d = max / -8
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        for j in 0..<16 {
            let x0 = x[j] * id, x1 = x[16 + j] * id
            let i0 = Int8(truncatingIfNeeded: truncatedInt32(x0 + 8.5))
            let i1 = Int8(truncatingIfNeeded: truncatedInt32(x1 + 8.5))
            let q0 = UInt8(truncatingIfNeeded: Swift.min(15, Int(i0)))
            let q1 = UInt8(truncatingIfNeeded: Swift.min(15, Int(i1)))
            y.storeBytes(of: q0 | q1 << 4, toByteOffset: 2 + j, as: UInt8.self)
        }
    }

    static func quantizeQ4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var min = Float.greatestFiniteMagnitude, max = -Float.greatestFiniteMagnitude
        for j in 0..<32 {
            if x[j] < min { min = x[j] }
            if x[j] > max { max = x[j] }
        }
        let d = (max - min) / 15
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        storeHalf(min, y, 2)
        for j in 0..<16 {
            let x0 = (x[j] - min) * id, x1 = (x[16 + j] - min) * id
            let i0 = Int8(truncatingIfNeeded: truncatedInt32(x0 + 0.5))
            let i1 = Int8(truncatingIfNeeded: truncatedInt32(x1 + 0.5))
            let q0 = UInt8(truncatingIfNeeded: Swift.min(15, Int(i0)))
            let q1 = UInt8(truncatingIfNeeded: Swift.min(15, Int(i1)))
            y.storeBytes(of: q0 | q1 << 4, toByteOffset: 4 + j, as: UInt8.self)
        }
    }

    static func quantizeQ5_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0, max: Float = 0
        for j in 0..<32 where amax < abs(x[j]) { amax = abs(x[j]); max = x[j] }
        let d = max / -16
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let x0 = x[j] * id, x1 = x[16 + j] * id
            let i0 = Int8(truncatingIfNeeded: truncatedInt32(x0 + 16.5))
            let i1 = Int8(truncatingIfNeeded: truncatedInt32(x1 + 16.5))
            let q0 = UInt8(truncatingIfNeeded: Swift.min(31, Int(i0)))
            let q1 = UInt8(truncatingIfNeeded: Swift.min(31, Int(i1)))
            y.storeBytes(of: (q0 & 0x0F) | (q1 & 0x0F) << 4, toByteOffset: 6 + j, as: UInt8.self)
            qh |= UInt32((q0 & 0x10) >> 4) << UInt32(j)
            qh |= UInt32((q1 & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
    }

    static func quantizeQ5_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var min = Float.greatestFiniteMagnitude, max = -Float.greatestFiniteMagnitude
        for j in 0..<32 {
            if x[j] < min { min = x[j] }
            if x[j] > max { max = x[j] }
        }
        let d = (max - min) / 31
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        storeHalf(min, y, 2)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let x0 = (x[j] - min) * id, x1 = (x[16 + j] - min) * id
            let q0 = UInt8(truncatingIfNeeded: truncatedInt32(x0 + 0.5))
            let q1 = UInt8(truncatingIfNeeded: truncatedInt32(x1 + 0.5))
            y.storeBytes(of: (q0 & 0x0F) | (q1 & 0x0F) << 4, toByteOffset: 8 + j, as: UInt8.self)
            qh |= UInt32((q0 & 0x10) >> 4) << UInt32(j)
            qh |= UInt32((q1 & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    static func quantizeQ8_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = Swift.max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        for j in 0..<32 {
            let q = Int8(truncatingIfNeeded: truncatedInt32((x[j] * id).rounded()))
            y.storeBytes(of: q, toByteOffset: 2 + j, as: Int8.self)
        }
    }

    // MARK: the k-quants' scale searches

    static let groupMaxEpsilon: Float = 1e-15

    /// ggml's `make_qx_quants` with `qw == NULL`.
    static func makeQXQuants(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>, rmseType: Int) -> Float {
        var max: Float = 0, amax: Float = 0
        for i in 0..<n where abs(x[i]) > amax { amax = abs(x[i]); max = x[i] }
        if amax < groupMaxEpsilon {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let fmax = Float(nmax)
        var iscale = Float(-nmax) / max
        @inline(__always) func clamp(_ l: Int32) -> Int32 { Swift.max(Int32(-nmax), Swift.min(Int32(nmax - 1), l)) }
        if rmseType == 0 {
            for i in 0..<n { L[i] = Int8(truncatingIfNeeded: Int32(nmax) + clamp(nearestInt(iscale * x[i]))) }
            return 1 / iscale
        }
        var type = rmseType, returnEarly = false
        if type < 0 { type = -type; returnEarly = true }
        @inline(__always) func weight(_ v: Float) -> Float {
            switch type {
            case 1: v * v
            case 2: 1
            case 3: abs(v)
            default: abs(v).squareRoot()
            }
        }
        var sumlx: Float = 0, suml2: Float = 0
        for i in 0..<n {
            let l = clamp(nearestInt(iscale * x[i]))
            L[i] = Int8(truncatingIfNeeded: l + Int32(nmax))
            let w = weight(x[i]), fl = Float(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        }
        var scale: Float = suml2 != 0 ? sumlx / suml2 : 0
        if returnEarly { return suml2 > 0 ? 0.5 * (scale + 1 / iscale) : 1 / iscale }
        var best = scale * sumlx
        for step in -9...9 where step != 0 {
            iscale = -(fmax + 0.1 * Float(step)) / max
            sumlx = 0; suml2 = 0
            for i in 0..<n {
                let fl = Float(clamp(nearestInt(iscale * x[i])))
                let w = weight(x[i])
                sumlx += w * x[i] * fl
                suml2 += w * fl * fl
            }
            if suml2 > 0, sumlx * sumlx > best * suml2 {
                for i in 0..<n { L[i] = Int8(truncatingIfNeeded: Int32(nmax) + clamp(nearestInt(iscale * x[i]))) }
                scale = sumlx / suml2
                best = scale * sumlx
            }
        }
        return scale
    }

    /// ggml's `make_q3_quants`.
    static func makeQ3Quants(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>, doRMSE: Bool) -> Float {
        var max: Float = 0, amax: Float = 0
        for i in 0..<n where abs(x[i]) > amax { amax = abs(x[i]); max = x[i] }
        if amax < groupMaxEpsilon {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let iscale = Float(-nmax) / max
        @inline(__always) func clamp(_ l: Int32) -> Int32 { Swift.max(Int32(-nmax), Swift.min(Int32(nmax - 1), l)) }
        if doRMSE {
            var sumlx: Float = 0, suml2: Float = 0
            for i in 0..<n {
                let l = clamp(nearestInt(iscale * x[i]))
                L[i] = Int8(truncatingIfNeeded: l)
                let w = x[i] * x[i], fl = Float(l)
                sumlx += w * x[i] * fl
                suml2 += w * fl * fl
            }
            for _ in 0..<5 {
                var changed = 0
                for i in 0..<n {
                    let w = x[i] * x[i]
                    var slx = sumlx - w * x[i] * Float(L[i])
                    if slx > 0 {
                        var sl2 = suml2 - w * Float(L[i]) * Float(L[i])
                        let newL = clamp(nearestInt(x[i] * sl2 / slx))
                        if newL != Int32(L[i]) {
                            let fl = Float(newL)
                            slx += w * x[i] * fl
                            sl2 += w * fl * fl
                            if sl2 > 0, slx * slx * suml2 > sumlx * sumlx * sl2 {
                                L[i] = Int8(truncatingIfNeeded: newL)
                                sumlx = slx
                                suml2 = sl2
                                changed += 1
                            }
                        }
                    }
                }
                if changed == 0 { break }
            }
            for i in 0..<n { L[i] = L[i] &+ Int8(truncatingIfNeeded: nmax) }
            return suml2 > 0 ? sumlx / suml2 : 0
        }
        for i in 0..<n { L[i] = Int8(truncatingIfNeeded: clamp(nearestInt(iscale * x[i])) + Int32(nmax)) }
        return 1 / iscale
    }

    /// ggml's `make_qkx2_quants`; returns the scale and `the_min`.
    static func makeQKX2Quants(
        _ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>,
        _ L: UnsafeMutablePointer<UInt8>, _ Laux: UnsafeMutablePointer<UInt8>,
        rmin: Float, rdelta: Float, nstep: Int, useMAD: Bool
    ) -> (scale: Float, min: Float) {
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
        if max == min {
            for i in 0..<n { L[i] = 0 }
            return (0, -min)
        }
        let fmax = Float(nmax)
        @inline(__always) func clamp(_ l: Int32) -> Int32 { Swift.max(0, Swift.min(Int32(nmax), l)) }
        var iscale = fmax / (max - min)
        var scale = 1 / iscale
        var bestError: Float = 0
        for i in 0..<n {
            let l = clamp(nearestInt(iscale * (x[i] - min)))
            L[i] = UInt8(truncatingIfNeeded: l)
            var diff = scale * Float(l) + min - x[i]
            diff = useMAD ? abs(diff) : diff * diff
            bestError += weights[i] * diff
        }
        if nstep < 1 { return (scale, -min) }
        for step in 0...nstep {
            iscale = (rmin + rdelta * Float(step) + fmax) / (max - min)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = clamp(nearestInt(iscale * (x[i] - min)))
                Laux[i] = UInt8(truncatingIfNeeded: l)
                let w = weights[i], fl = Float(l)
                sumL += w * fl
                sumL2 += w * fl * fl
                sumXL += w * fl * x[i]
            }
            let D = sumW * sumL2 - sumL * sumL
            if D > 0 {
                var thisScale = (sumW * sumXL - sumX * sumL) / D
                var thisMin = (sumL2 * sumX - sumL * sumXL) / D
                if thisMin > 0 {
                    thisMin = 0
                    thisScale = sumXL / sumL2
                }
                var error: Float = 0
                for i in 0..<n {
                    var diff = thisScale * Float(Laux[i]) + thisMin - x[i]
                    diff = useMAD ? abs(diff) : diff * diff
                    error += weights[i] * diff
                }
                if error < bestError {
                    for i in 0..<n { L[i] = Laux[i] }
                    bestError = error
                    scale = thisScale
                    min = thisMin
                }
            }
        }
        return (scale, -min)
    }

    // MARK: 256-value blocks

    /// Q2_K: scales[16], qs[64], d, dmin.
    static func quantizeQ2_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256 + 16) { buffer in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 16 + 16 + 16) { floats in
                let L = buffer.baseAddress!, Laux = L + 256
                let weights = floats.baseAddress!, mins = weights + 16, scales = mins + 16
                var maxScale: Float = 0, maxMin: Float = 0
                for j in 0..<16 {
                    for l in 0..<16 { weights[l] = abs(x[16 * j + l]) }
                    let (s, m) = makeQKX2Quants(16, 3, x + 16 * j, weights, L + 16 * j, Laux, rmin: -0.5, rdelta: 0.1, nstep: 15, useMAD: true)
                    scales[j] = s
                    mins[j] = m
                    if s > maxScale { maxScale = s }
                    if m > maxMin { maxMin = m }
                }
                var sc = [UInt8](repeating: 0, count: 16)
                if maxScale > 0 {
                    let iscale = 15 / maxScale
                    for j in 0..<16 { sc[j] = UInt8(truncatingIfNeeded: nearestInt(iscale * scales[j])) }
                    storeHalf(maxScale / 15, y, 80)
                } else {
                    storeHalf(0, y, 80)
                }
                if maxMin > 0 {
                    let iscale = 15 / maxMin
                    for j in 0..<16 { sc[j] |= UInt8(truncatingIfNeeded: nearestInt(iscale * mins[j]) << 4) }
                    storeHalf(maxMin / 15, y, 82)
                } else {
                    storeHalf(0, y, 82)
                }
                let dAll = Float(halfBits: y.load(fromByteOffset: 80, as: UInt16.self))
                let mAll = Float(halfBits: y.load(fromByteOffset: 82, as: UInt16.self))
                for j in 0..<16 {
                    let d = dAll * Float(sc[j] & 0x0F)
                    if d == 0 { continue }
                    let dm = mAll * Float(sc[j] >> 4)
                    for i in 0..<16 {
                        let l = nearestInt((x[16 * j + i] + dm) / d)
                        L[16 * j + i] = UInt8(truncatingIfNeeded: Swift.max(0, Swift.min(3, l)))
                    }
                }
                for j in 0..<16 { y.storeBytes(of: sc[j], toByteOffset: j, as: UInt8.self) }
                for j in stride(from: 0, to: 256, by: 128) {
                    for l in 0..<32 {
                        let q = L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6
                        y.storeBytes(of: q, toByteOffset: 16 + j / 4 + l, as: UInt8.self)
                    }
                }
            }
        }
    }

    /// Q3_K: hmask[32], qs[64], scales[12], d.
    static func quantizeQ3_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: 256) { buffer in
            let L = buffer.baseAddress!
            var scales = [Float](repeating: 0, count: 16)
            var maxScale: Float = 0, amax: Float = 0
            for j in 0..<16 {
                scales[j] = makeQ3Quants(16, 4, x + 16 * j, L + 16 * j, doRMSE: true)
                let s = abs(scales[j])
                if s > amax { amax = s; maxScale = scales[j] }
            }
            var packed = [UInt8](repeating: 0, count: 12)
            if maxScale != 0 {
                let iscale = -32 / maxScale
                for j in 0..<16 {
                    var l = Int8(truncatingIfNeeded: nearestInt(iscale * scales[j]))
                    l = Swift.max(-32, Swift.min(31, l)) + 32
                    if j < 8 {
                        packed[j] = UInt8(l & 0x0F)
                    } else {
                        packed[j - 8] |= UInt8(l & 0x0F) << 4
                    }
                    l >>= 4
                    packed[j % 4 + 8] |= UInt8(truncatingIfNeeded: Int(l) << (2 * (j / 4)))
                }
                storeHalf(1 / iscale, y, 108)
            } else {
                storeHalf(0, y, 108)
            }
            let dAll = Float(halfBits: y.load(fromByteOffset: 108, as: UInt16.self))
            for j in 0..<16 {
                var sc = Int8(truncatingIfNeeded: j < 8 ? packed[j] & 0x0F : packed[j - 8] >> 4)
                sc = (sc | Int8(truncatingIfNeeded: ((packed[8 + j % 4] >> UInt8(2 * (j / 4))) & 3) << 4)) - 32
                let d = dAll * Float(sc)
                if d == 0 { continue }
                for i in 0..<16 {
                    let l = nearestInt(x[16 * j + i] / d)
                    L[16 * j + i] = Int8(truncatingIfNeeded: Swift.max(-4, Swift.min(3, l)) + 4)
                }
            }
            var hmask = [UInt8](repeating: 0, count: 32)
            var m = 0
            var hm: UInt8 = 1
            for j in 0..<256 {
                if L[j] > 3 {
                    hmask[m] |= hm
                    L[j] -= 4
                }
                m += 1
                if m == 32 { m = 0; hm <<= 1 }
            }
            for j in 0..<32 { y.storeBytes(of: hmask[j], toByteOffset: j, as: UInt8.self) }
            for j in stride(from: 0, to: 256, by: 128) {
                for l in 0..<32 {
                    let q = UInt8(bitPattern: L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6)
                    y.storeBytes(of: q, toByteOffset: 32 + j / 4 + l, as: UInt8.self)
                }
            }
            for j in 0..<12 { y.storeBytes(of: packed[j], toByteOffset: 96 + j, as: UInt8.self) }
        }
    }

    /// Packs Q4_K / Q5_K sub-block scales and mins (6 bits each) into 12 bytes, as ggml does.
    static func packScales(_ scales: UnsafePointer<Float>, _ mins: UnsafePointer<Float>, maxScale: Float, maxMin: Float) -> [UInt8] {
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
        let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        var s = [UInt8](repeating: 0, count: 12)
        for j in 0..<8 {
            let ls = Swift.min(63, UInt8(truncatingIfNeeded: nearestInt(invScale * scales[j])))
            let lm = Swift.min(63, UInt8(truncatingIfNeeded: nearestInt(invMin * mins[j])))
            if j < 4 {
                s[j] = ls
                s[j + 4] = lm
            } else {
                s[j + 4] = (ls & 0x0F) | (lm & 0x0F) << 4
                s[j - 4] |= (ls >> 4) << 6
                s[j] |= (lm >> 4) << 6
            }
        }
        return s
    }

    /// The shared body of Q4_K and Q5_K: sub-block searches, packed scales, the codes `L`.
    static func quantizeKWithMins(
        _ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, nmax: Int, rmin: Float, nstep: Int,
        _ L: UnsafeMutablePointer<UInt8>
    ) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 32 + 8 + 8) { floats in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { aux in
                let weights = floats.baseAddress!, mins = weights + 32, scales = mins + 8
                var maxScale: Float = 0, maxMin: Float = 0
                for j in 0..<8 {
                    var sumX2: Float = 0
                    for l in 0..<32 { sumX2 += x[32 * j + l] * x[32 * j + l] }
                    let average = (sumX2 / 32).squareRoot()
                    for l in 0..<32 { weights[l] = average + abs(x[32 * j + l]) }
                    let (s, m) = makeQKX2Quants(
                        32, nmax, x + 32 * j, weights, L + 32 * j, aux.baseAddress!, rmin: rmin, rdelta: 0.1, nstep: nstep, useMAD: false)
                    scales[j] = s
                    mins[j] = m
                    if s > maxScale { maxScale = s }
                    if m > maxMin { maxMin = m }
                }
                let packed = packScales(scales, mins, maxScale: maxScale, maxMin: maxMin)
                storeHalf(maxScale / 63, y, 0)
                storeHalf(maxMin / 63, y, 2)
                for j in 0..<12 { y.storeBytes(of: packed[j], toByteOffset: 4 + j, as: UInt8.self) }
                let dAll = fp16Round(maxScale / 63), mAll = fp16Round(maxMin / 63)
                packed.withUnsafeBytes { p in
                    for j in 0..<8 {
                        let (sc, m) = scaleMin(p.baseAddress!, j)
                        let d = dAll * Float(sc)
                        if d == 0 { continue }
                        let dm = mAll * Float(m)
                        for i in 0..<32 {
                            let l = nearestInt((x[32 * j + i] + dm) / d)
                            L[32 * j + i] = UInt8(truncatingIfNeeded: Swift.max(0, Swift.min(Int32(nmax), l)))
                        }
                    }
                }
            }
        }
    }

    /// Q4_K: d, dmin, scales[12], qs[128].
    static func quantizeQ4_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { buffer in
            let L = buffer.baseAddress!
            quantizeKWithMins(x, y, nmax: 15, rmin: -1, nstep: 20, L)
            for j in stride(from: 0, to: 256, by: 64) {
                for l in 0..<32 {
                    y.storeBytes(of: L[j + l] | L[j + l + 32] << 4, toByteOffset: 16 + j / 2 + l, as: UInt8.self)
                }
            }
        }
    }

    /// Q5_K: d, dmin, scales[12], qh[32], qs[128].
    static func quantizeQ5_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { buffer in
            let L = buffer.baseAddress!
            quantizeKWithMins(x, y, nmax: 31, rmin: -0.5, nstep: 15, L)
            var qh = [UInt8](repeating: 0, count: 32)
            var m1: UInt8 = 1, m2: UInt8 = 2
            for n in stride(from: 0, to: 256, by: 64) {
                for j in 0..<32 {
                    var l1 = L[n + j]
                    if l1 > 15 { l1 -= 16; qh[j] |= m1 }
                    var l2 = L[n + j + 32]
                    if l2 > 15 { l2 -= 16; qh[j] |= m2 }
                    y.storeBytes(of: l1 | l2 << 4, toByteOffset: 48 + n / 2 + j, as: UInt8.self)
                }
                m1 <<= 2
                m2 <<= 2
            }
            for j in 0..<32 { y.storeBytes(of: qh[j], toByteOffset: 16 + j, as: UInt8.self) }
        }
    }

    /// Q6_K: ql[128], qh[64], scales[16] (int8), d.
    static func quantizeQ6_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: 256) { buffer in
            let L = buffer.baseAddress!
            var scales = [Float](repeating: 0, count: 16)
            var maxScale: Float = 0, maxAbsScale: Float = 0
            for ib in 0..<16 {
                let scale = makeQXQuants(16, 32, x + 16 * ib, L + 16 * ib, rmseType: 1)
                scales[ib] = scale
                if abs(scale) > maxAbsScale { maxAbsScale = abs(scale); maxScale = scale }
            }
            if maxAbsScale < groupMaxEpsilon {
                y.initializeMemory(as: UInt8.self, repeating: 0, count: 210)
                return
            }
            scales.withUnsafeBufferPointer { finishQ6_K(x, y, L, $0.baseAddress!, maxScale: maxScale) }
        }
    }
}
