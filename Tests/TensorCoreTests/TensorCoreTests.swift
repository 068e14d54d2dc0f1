import TensorCore
import Testing

@Suite("dtypes and shapes")
struct ShapeTests {
    @Test(
        "every safetensors dtype name parses and has its width",
        arguments: [
            ("BOOL", 8), ("U8", 8), ("I8", 8), ("I16", 16), ("U16", 16), ("F16", 16), ("BF16", 16), ("I32", 32), ("U32", 32),
            ("F32", 32), ("F64", 64), ("I64", 64), ("U64", 64), ("F8_E4M3", 8), ("F8_E5M2", 8), ("F4", 4), ("C64", 64),
        ])
    func names(_ name: String, _ bits: Int) throws {
        let dtype = try #require(DType(name: name))
        #expect(dtype.bitWidth == bits)
        #expect(dtype.name == name)
    }

    @Test("unknown names are nil")
    func unknown() {
        #expect(DType(name: "F17") == nil)
        #expect(DType(name: "f32") == nil)
    }

    @Test("element and byte counts are overflow-checked")
    func overflow() throws {
        #expect(try Shape([]).elementCount() == 1)
        #expect(try Shape([3, 0, 5]).elementCount() == 0)
        #expect(try Shape([320, 4, 3, 3]).byteCount(of: .f16) == 23040)
        #expect(throws: TensorCoreError.self) { try Shape([2, Int.max]).elementCount() }
        #expect(throws: TensorCoreError.self) { try Shape([Int.max / 2 + 1]).byteCount(of: .f32) }
        #expect(throws: TensorCoreError.self) { try Shape([3]).byteCount(of: .f4) }
        #expect(try Shape([4]).byteCount(of: .f4) == 2)
        #expect(throws: TensorCoreError.self) { try Shape(validating: [2, -1]) }
    }
}

@Suite("f16 and bf16 conversion")
struct ConversionTests {
    @Test("f16 → f32 → f16 is the identity for every non-NaN half")
    func halfRoundTrip() {
        for bits in 0...UInt16.max {
            let f = Float(halfBits: bits)
            #expect(f.isNaN == (bits & 0x7C00 == 0x7C00 && bits & 0x3FF != 0))
            if !f.isNaN {
                #expect(f.halfBits == bits, "0x\(String(bits, radix: 16))")
                // Swift's own Float16 agrees on the value.
                #expect(f == Float(Float16(bitPattern: bits)))
            }
        }
    }

    @Test("f32 → f16 rounds to nearest even, like Swift's Float16")
    func halfRounding() {
        var state: UInt32 = 0x1234_5678
        for _ in 0..<1_000_000 {
            state ^= state << 13; state ^= state >> 17; state ^= state << 5
            let f = Float(bitPattern: state)
            if f.isNaN {
                #expect(f.halfBits & 0x7FFF == 0x7E00)
                continue
            }
            #expect(f.halfBits == Float16(f).bitPattern, "\(f)")
        }
        #expect(Float(65520).halfBits == 0x7C00)  // halfway to 65536 rounds up to inf
        #expect(Float(65519.996).halfBits == 0x7BFF)
        #expect(Float(1 + 1.0 / 2048).halfBits == 0x3C00)  // tie → even
        #expect(Float(1 + 3.0 / 2048).halfBits == 0x3C02)  // tie → even (up)
        #expect(Float(-0.0).halfBits == 0x8000)
        #expect(Float(2.9802322e-8).halfBits == 0)  // exactly half the smallest subnormal → 0
        #expect(Float(2.9802326e-8).halfBits == 1)
        #expect(Float.infinity.halfBits == 0x7C00)
        #expect((-Float.nan).halfBits == 0xFE00)  // PyTorch's NaN pattern, sign kept
    }

    @Test("bf16 rounds to nearest even and keeps NaN as PyTorch does")
    func bfloat16() {
        #expect(Float(1).bfloat16Bits == 0x3F80)
        #expect(Float(bitPattern: 0x3F80_8000).bfloat16Bits == 0x3F80)  // tie, even stays
        #expect(Float(bitPattern: 0x3F81_8000).bfloat16Bits == 0x3F82)  // tie, odd rounds up
        #expect(Float(bitPattern: 0x3F80_8001).bfloat16Bits == 0x3F81)
        #expect(Float.nan.bfloat16Bits == 0x7FC0)
        #expect(Float(bitPattern: 0x7F7F_FFFF).bfloat16Bits == 0x7F80)  // max float rounds to inf
        for bits in stride(from: UInt32(0), to: UInt32.max - 65536 * 7919, by: 65536 * 7919) {
            let f = Float(bitPattern: bits)
            if !f.isNaN { #expect(Float(bfloat16Bits: f.bfloat16Bits) == Float(bitPattern: bits & 0xFFFF_0000) || (bits & 0xFFFF) != 0) }
        }
    }

    @Test("bulk conversion of unaligned sources matches the scalar one")
    func bulkUnaligned() throws {
        let values: [Float] = (0..<1000).map { Float($0) * 0.37 - 100 }
        var raw: [UInt8] = [0xAA] + values.withUnsafeBytes { Array($0) }
        var out = [UInt8](repeating: 0, count: 2000)
        try raw.withUnsafeMutableBytes { src in
            try out.withUnsafeMutableBytes { dst in
                try ElementConversion.convert(
                    UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(src)[1...]), from: .f32, into: dst, to: .f16, count: 1000)
            }
        }
        for (i, v) in values.enumerated() {
            #expect(UInt16(out[2 * i]) | UInt16(out[2 * i + 1]) << 8 == v.halfBits)
        }
        raw.removeAll()
    }

    @Test("conversions refuse what they cannot do")
    func refuses() {
        var out = [UInt8](repeating: 0, count: 16)
        let src = [UInt8](repeating: 0, count: 16)
        #expect(throws: TensorCoreError.self) {
            try src.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { try ElementConversion.convert(s, from: .i32, into: $0, to: .f16, count: 4) }
            }
        }
        #expect(throws: TensorCoreError.self) {
            try src.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { try ElementConversion.convert(s, from: .f32, into: $0, to: .f16, count: 5) }
            }
        }
    }
}

@Suite("statistics")
struct StatisticsTests {
    @Test("match a plain double-precision computation", arguments: [0, 1, 15, 16, 17, 1000, 40_000])
    func matchesNaive(_ count: Int) {
        var values = [Float](repeating: 0, count: count)
        var state: UInt64 = UInt64(count) + 1
        for i in values.indices {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            values[i] = Float(Int64(bitPattern: state) >> 40) / 1e5 + 3
        }
        let s = values.withUnsafeBufferPointer { TensorStatistics(values: $0) }
        #expect(s.count == count)
        guard count > 0 else {
            #expect(s.mean.isNaN)
            return
        }
        let mean = values.reduce(0.0) { $0 + Double($1) } / Double(count)
        let variance = values.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(count)
        #expect(abs(s.mean - mean) <= 1e-9 * max(1, abs(mean)))
        #expect(abs(s.std - variance.squareRoot()) <= 1e-9 * max(1, variance.squareRoot()))
        #expect(s.min == Double(values.min()!))
        #expect(s.max == Double(values.max()!))
    }

    @Test("NaN, infinities, zeros and f16 overflow are counted, not averaged")
    func specials() {
        var values = [Float](repeating: 1, count: 100)
        values[3] = .nan; values[50] = .infinity; values[51] = -.infinity; values[60] = 0; values[61] = -0.0
        values[70] = 70000; values[71] = -65505; values[72] = 65504
        let s = values.withUnsafeBufferPointer { TensorStatistics(values: $0) }
        #expect(s.nanCount == 1)
        #expect(s.infinityCount == 2)
        #expect(s.zeroCount == 2)
        #expect(s.beyondFloat16Count == 2)
        #expect(s.finiteCount == 97)
        #expect(s.max == 70000 && s.min == -65505)
    }

    @Test("works from f16 bytes")
    func fromHalf() throws {
        let halves: [UInt16] = [Float(1).halfBits, Float(-2).halfBits, 0x7C00, 0x7E00]
        let s = try halves.withUnsafeBytes { try TensorStatistics(bytes: $0, dtype: .f16, count: 4) }
        #expect(s.min == -2 && s.max == 1 && s.infinityCount == 1 && s.nanCount == 1)
    }
}

@Suite("XXH64")
struct XXHashTests {
    /// Vectors from the python-xxhash package 3.5.0 (the reference C implementation) over
    /// bytes `(i * 31 + 7) & 0xff`: (length, hash with seed 0, hash with seed 2654435761).
    static let vectors: [(Int, UInt64, UInt64)] = [
        (0, 0xef46db3751d8e999, 0xac75fda2929b17ef), (1, 0xa96c7f0ce858bbb7, 0x84e535b36672440d),
        (3, 0x56e6957632a487f9, 0xd095a9239060f0a3), (4, 0xc60d15b1e3ff8f04, 0xd4e4b946fb0bfbb4),
        (7, 0xafbefc3d6c6f9a8e, 0x38386302628c52dc), (8, 0x3da5c7aa269683e0, 0x3748218f9083d1c1),
        (15, 0xae2a37eb9357caa7, 0x283deb489df92be1), (31, 0x4a74f3a1a39ad4a1, 0xb806f858c84789ea),
        (32, 0x8d57d6a4671cc43d, 0x8ef2e38dde10f162), (33, 0x62c9fd21ed857664, 0x5a653650552f822c),
        (63, 0x5c320a0d2707057f, 0xcdec73bbccfd2d50), (64, 0x7bbabbc45729d17e, 0x861fd034d84dab20),
        (100, 0xefa0ad2d3e70c151, 0x4ac13414471c7284), (255, 0x2c3db4bb567f731e, 0x42fd73a6560124f6),
        (300, 0x8d2ba0cd7fece76c, 0x88a87907c214d1bd),
    ]

    static let data: [UInt8] = (0..<300).map { UInt8(truncatingIfNeeded: $0 * 31 + 7) }

    @Test("matches the reference implementation", arguments: vectors.indices)
    func reference(_ i: Int) {
        let (n, seed0, seedPrime) = Self.vectors[i]
        Self.data.withUnsafeBytes { raw in
            let slice = UnsafeRawBufferPointer(rebasing: raw[0..<n])
            #expect(XXHash64.hash(slice) == seed0)
            #expect(XXHash64.hash(slice, seed: 2_654_435_761) == seedPrime)
        }
    }

    @Test("streaming in pieces equals one call")
    func streaming() {
        Self.data.withUnsafeBytes { raw in
            for split in [1, 5, 31, 32, 33, 200] {
                var h = XXHash64()
                var offset = 0
                while offset < raw.count {
                    let end = min(raw.count, offset + split)
                    h.update(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
                    offset = end
                }
                #expect(h.finalize() == 0x8d2ba0cd7fece76c)
            }
        }
    }
}

@Suite("f16 overflow counting")
struct Float16OverflowTests {
    @Test("counts finite values that round to infinity in f16, from f32, bf16 and f64")
    func counts() {
        let values: [Float] = [65504, 65519.99, 65520, -70000, 1e30, .infinity, -.infinity, .nan, 0, 1]
        // 65520, -70000 and 1e30 overflow; 65519.99 rounds down to 65504; ±inf and NaN were never finite.
        let padded = values + [Float](repeating: 2, count: 37) + [66000]
        let f32 = padded.withUnsafeBytes { ElementConversion.float16OverflowCount($0, dtype: .f32, count: padded.count) }
        #expect(f32 == 4)
        for (v, expected) in zip(padded, padded.map { $0.isFinite && $0.halfBits & 0x7FFF == 0x7C00 }) {
            let one = [v].withUnsafeBytes { ElementConversion.float16OverflowCount($0, dtype: .f32, count: 1) }
            #expect((one == 1) == expected, "\(v)")
        }
        let bf16 = padded.map(\.bfloat16Bits)
        let expectedBF16 = bf16.filter {
            let f = Float(bfloat16Bits: $0); return f.isFinite && f.halfBits & 0x7FFF == 0x7C00
        }.count
        #expect(bf16.withUnsafeBytes { ElementConversion.float16OverflowCount($0, dtype: .bf16, count: bf16.count) } == expectedBF16)
        let f64 = padded.map(Double.init)
        #expect(f64.withUnsafeBytes { ElementConversion.float16OverflowCount($0, dtype: .f64, count: f64.count) } == 4)
    }
}

@Suite("printable text")
struct PrintableTextTests {
    @Test(
        "control characters, escapes and bidirectional overrides are escaped",
        arguments: [
            ("plain.name", "plain.name"),
            ("a\nb", "a\\nb"),
            ("a\r\tb", "a\\r\\tb"),
            ("\u{1B}[31mred\u{1B}[0m", "\\x1b[31mred\\x1b[0m"),
            ("nul\u{0}x", "nul\\x00x"),
            ("del\u{7F}", "del\\x7f"),
            ("c1\u{9B}31m", "c1\\x9b31m"),
            ("back\\slash", "back\\\\slash"),
            ("rtl\u{202E}txt", "rtl\\u{202e}txt"),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("é😀日本", "é😀日本"),
        ])
    func escapes(_ c: (String, String)) {
        #expect(PrintableText.escaped(c.0) == c.1)
        #expect(!PrintableText.escaped(c.0).unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) })
    }

    @Test("invalid UTF-8 bytes are written as \\xNN, valid sequences as text")
    func bytes() {
        #expect(PrintableText.escaped(bytes: [0x61, 0xFF, 0x62]) == "a\\xffb")
        #expect(PrintableText.escaped(bytes: [0xC0, 0x80]) == "\\xc0\\x80")
        #expect(PrintableText.escaped(bytes: [0xED, 0xA0, 0x80]) == "\\xed\\xa0\\x80")
        #expect(PrintableText.escaped(bytes: [0xE2, 0x82]) == "\\xe2\\x82")
        #expect(PrintableText.escaped(bytes: Array("é\n".utf8)) == "é\\n")
        #expect(PrintableText.escaped(bytes: [0x1B, 0x5B]) == "\\x1b[")
    }
}
