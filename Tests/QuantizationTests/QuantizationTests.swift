import Quantization
import TensorCore
import Testing

/// Deterministic pseudo-random normal values (xorshift + Box–Muller).
func normalValues(_ count: Int, seed: UInt64 = 7, scale: Float = 0.05) -> [Float] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    func uniform() -> Float {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return (Float(state >> 40) + 0.5) / Float(1 << 24)
    }
    return (0..<count).map { _ in
        let u = uniform(), v = uniform()
        return scale * (-2 * logf(u)).squareRoot() * cosf(2 * .pi * v)
    }
}

private func logf(_ x: Float) -> Float { Float(log(Double(x))) }
private func cosf(_ x: Float) -> Float {
    // Taylor series after range reduction; exact enough for test data.
    var y = Double(x).truncatingRemainder(dividingBy: 2 * .pi)
    if y > .pi { y -= 2 * .pi }
    var term = 1.0, sum = 1.0
    for k in stride(from: 2.0, through: 30, by: 2) { term *= -y * y / (k * (k - 1)); sum += term }
    return Float(sum)
}
private func log(_ x: Double) -> Double {
    let t = (x - 1) / (x + 1), t2 = t * t
    var term = t, sum = 0.0, k = 1.0
    while k < 400 { sum += term / k; term *= t2; k += 2 }
    return 2 * sum
}

/// The scheme written the slow, obvious way.
func referenceQuantize(_ x: [Float], rows: Int, rowLength: Int, block: Int) -> (q: [Int8], scales: [UInt16]) {
    var q = [Int8](repeating: 0, count: x.count), scales: [UInt16] = []
    for r in 0..<rows {
        var start = 0
        while start < rowLength {
            let end = min(rowLength, start + block)
            let amax = (start..<end).map { abs(x[r * rowLength + $0]) }.max()!
            let bits = (amax / 127).halfBits
            let scale = Float(halfBits: bits)
            scales.append(bits)
            for j in start..<end {
                let v = scale == 0 ? 0 : min(max(x[r * rowLength + j] / scale, -127), 127)
                q[r * rowLength + j] = Int8(v.rounded(.toNearestOrEven))
            }
            start = end
        }
    }
    return (q, scales)
}

@Suite("int8 quantisation")
struct QuantizationTests {
    @Test(
        "glob patterns",
        arguments: [
            ("*conv_in.weight", "unet.conv_in.weight", true),
            ("*conv_in.weight", "unet.conv_in.bias", false),
            ("vae.*", "vae.decoder.conv_out.weight", true),
            ("unet.down_blocks.?.resnets.*", "unet.down_blocks.1.resnets.0.conv1.weight", true),
            ("unet.down_blocks.?.resnets.*", "unet.down_blocks.10.resnets.0.conv1.weight", false),
            ("exact", "exact", true), ("exact", "exactly", false), ("*", "", true), ("**a*", "bab", true),
        ])
    func glob(_ pattern: String, _ name: String, _ expected: Bool) {
        #expect(Glob.matches(pattern, name) == expected)
    }

    @Test("layout sizes: blocks along in×kh×kw, partial last block, 64-byte aligned scales")
    func layout() throws {
        let l = try Int8BlockLayout(shape: [3, 4, 3, 3], blockSize: 32)
        #expect(l.rows == 3 && l.rowLength == 36 && l.blocksPerRow == 2 && l.scaleCount == 6)
        #expect(l.scaleOffset == 128 && l.byteCount == 140)
        let perChannel = try Int8BlockLayout(shape: [320, 320, 3, 3], blockSize: 2880)
        #expect(perChannel.blocksPerRow == 1)
        #expect(throws: QuantizationError.self) { try Int8BlockLayout(rows: -1, rowLength: 2, blockSize: 32) }
        #expect(throws: QuantizationError.self) { try Int8BlockLayout(rows: Int.max, rowLength: 2, blockSize: 32) }
    }

    @Test(
        "SIMD kernels equal the reference, and dequantising gives q·scale",
        arguments: [(5, 100, 32), (16, 2880, 32), (7, 36, 32), (8, 512, 64), (4, 2880, 2880), (3, 15, 32)])
    func matchesReference(_ rows: Int, _ rowLength: Int, _ block: Int) throws {
        let x = normalValues(rows * rowLength, seed: UInt64(rows * 31 + rowLength))
        let layout = try Int8BlockLayout(rows: rows, rowLength: rowLength, blockSize: block)
        let (buffer, metrics) = try x.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
        let ref = referenceQuantize(x, rows: rows, rowLength: rowLength, block: block)
        let bytes = buffer.bytes
        #expect(Array(bytes[0..<x.count]).map { Int8(bitPattern: $0) } == ref.q)
        let scales = (0..<layout.scaleCount).map { UInt16(bytes[layout.scaleOffset + 2 * $0]) | UInt16(bytes[layout.scaleOffset + 2 * $0 + 1]) << 8 }
        #expect(scales == ref.scales)
        var back = [Float](repeating: .nan, count: x.count)
        try back.withUnsafeMutableBufferPointer { try Int8Quantizer.dequantize(bytes, layout: layout, rows: 0..<rows, into: $0.baseAddress!) }
        for i in 0..<x.count {
            let r = i / rowLength, k = (i % rowLength) / block
            let expected = Float(ref.q[i]) * Float(halfBits: ref.scales[r * layout.blocksPerRow + k])
            #expect(back[i] == expected)
            if back[i] != expected { break }
        }
        // Rounding error is at most half a step (plus the f16 rounding of the scale).
        let recomputed = QuantizationMetrics.compare(reference: x, candidate: back)
        #expect(abs((recomputed.snrDecibels ?? 0) - (metrics.snrDecibels ?? 0)) < 0.01)
        #expect(abs(recomputed.maxAbsoluteError - metrics.maxAbsoluteError) < 1e-6)
        #expect(metrics.snrDecibels! > (block >= 512 ? 30 : 36))
        #expect(metrics.cosine > 0.9999)
    }

    @Test("rows can be dequantised alone")
    func rowSubset() throws {
        let x = normalValues(10 * 64)
        let layout = try Int8BlockLayout(rows: 10, rowLength: 64, blockSize: 32)
        let (buffer, _) = try x.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
        var all = [Float](repeating: 0, count: 640), some = [Float](repeating: 0, count: 128)
        try all.withUnsafeMutableBufferPointer { try Int8Quantizer.dequantize(buffer.bytes, layout: layout, rows: 0..<10, into: $0.baseAddress!) }
        try some.withUnsafeMutableBufferPointer { try Int8Quantizer.dequantize(buffer.bytes, layout: layout, rows: 3..<5, into: $0.baseAddress!) }
        #expect(Array(all[192..<320]) == some)
    }

    @Test("zeros are exact; NaN, infinity and scales beyond f16 are refused")
    func edges() throws {
        let layout = try Int8BlockLayout(rows: 1, rowLength: 40, blockSize: 32)
        let zeros = [Float](repeating: 0, count: 40)
        let (_, m) = try zeros.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
        #expect(m.snrDecibels == nil && m.maxAbsoluteError == 0 && m.cosine == 1)
        for (bad, code) in [(Float.nan, QuantizationError.Code.nonFinite), (.infinity, .nonFinite), (1e8, .scaleOverflow)] {
            var x = normalValues(40)
            x[35] = bad
            let error = #expect(throws: QuantizationError.self) {
                _ = try x.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
            }
            #expect(error?.code == code)
        }
    }

    @Test("Q8_0 repacking is lossless; it shares the scales of quantising straight to Q8_0")
    func q8() throws {
        let x = normalValues(4 * 96)
        let layout = try Int8BlockLayout(rows: 4, rowLength: 96, blockSize: 32)
        #expect(Q8_0.canRepack(layout, shape: [4, 96]))
        #expect(!Q8_0.canRepack(try Int8BlockLayout(shape: [4, 32, 3, 3]), shape: [4, 32, 3, 3]))
        let (buffer, _) = try x.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
        var repacked = [UInt8](repeating: 0, count: Q8_0.byteCount(values: x.count))
        var direct = repacked
        repacked.withUnsafeMutableBytes { Q8_0.repack(buffer.bytes, layout: layout, into: $0.baseAddress!) }
        _ = try direct.withUnsafeMutableBytes { out in
            try x.withUnsafeBufferPointer { try Q8_0.quantize($0.baseAddress!, count: x.count, into: out.baseAddress!) }
        }
        // Same f16 scales (f16(amax / 127)) in every block. The codes may differ by one where the
        // int8 scheme divides by the f16 scale and ggml multiplies by 1/d (f32): the int8 values
        // are repacked as they are, the direct path rounds as ggml does (GGMLBlockGoldenTests).
        for k in 0..<12 { #expect(repacked[(34 * k)..<(34 * k + 2)] == direct[(34 * k)..<(34 * k + 2)]) }
        var unpacked = [Float](repeating: 0, count: x.count)
        try repacked.withUnsafeBytes { raw in
            try unpacked.withUnsafeMutableBufferPointer { try GGMLBlocks.dequantize(raw, type: .q8_0, count: x.count, into: $0.baseAddress!) }
        }
        var int8 = [Float](repeating: 0, count: x.count)
        try int8.withUnsafeMutableBufferPointer { try Int8Quantizer.dequantize(buffer.bytes, layout: layout, rows: 0..<4, into: $0.baseAddress!) }
        #expect(unpacked == int8)
        #expect(repacked.count == 12 * 34)
    }

    @Test("rules: what stays unquantised")
    func rules() {
        let rules = QuantizationRules(keep: ["unet.mid_block.*"])
        func d(_ name: String, _ shape: [Int], _ dtype: DType = .f32) -> TensorDescriptor {
            TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: Shape(shape).count * 4)
        }
        func quantized(_ t: TensorDescriptor) -> Bool { if case .quantize = rules.decision(for: t) { true } else { false } }
        #expect(quantized(d("unet.down_blocks.0.resnets.0.conv1.weight", [320, 320, 3, 3])))
        #expect(quantized(d("unet.down_blocks.0.attentions.0.proj_in.weight", [320, 320, 1, 1])))
        #expect(quantized(d("text_encoder.text_model.embeddings.token_embedding.weight", [49408, 768], .f16)))
        #expect(!quantized(d("unet.down_blocks.0.resnets.0.conv1.bias", [320])))
        #expect(!quantized(d("unet.down_blocks.0.resnets.0.norm1.weight", [320])))
        #expect(!quantized(d("tiny.weight", [8, 8])))
        #expect(!quantized(d("unet.time_embedding.linear_1.weight", [1280, 320])))
        #expect(!quantized(d("unet.conv_in.weight", [320, 4, 3, 3])))
        #expect(!quantized(d("text_encoder.text_model.embeddings.position_ids", [1, 77], .i64)))
        #expect(!quantized(d("unet.mid_block.resnets.0.conv1.weight", [1280, 1280, 3, 3])))
        #expect(QuantizationRules.keptDType(for: d("unet.conv_in.weight", [320, 4, 3, 3])) == .f16)
        #expect(QuantizationRules.keptDType(for: d("b", [320])) == .f32)
    }

    @Test("metrics: SNR, max abs and cosine")
    func metrics() {
        let m = QuantizationMetrics.compare(reference: [1, 2, 3, 4], candidate: [1, 2, 3, 4.1])
        #expect(abs(m.snrDecibels! - 10 * 3.4771212547) < 1e-4)  // 10·log10(30 / 0.01), 4.1 rounded to f32
        #expect(abs(m.maxAbsoluteError - 0.1) < 1e-6)
        #expect(m.cosine > 0.9998 && m.cosine < 1)
        #expect(QuantizationMetrics.compare(reference: [1, 2], candidate: [1, 2]).snrDecibels == nil)
    }
}
