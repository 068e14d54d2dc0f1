import TensorCore

/// A ggml tensor type, numbered as `enum ggml_type` in ggml's `ggml.h` (ggml-org/ggml) and
/// GGUF's tensor table. Values are grouped in blocks of ``blockValues`` values stored in
/// ``blockBytes`` bytes; the plain types (`F32`, `F16`, …) are blocks of one value.
/// Layouts: `Formats/wpk.md`, "ggml block tensors".
public struct GGMLType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0)
    public static let f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2)
    public static let q4_1 = GGMLType(rawValue: 3)
    public static let q5_0 = GGMLType(rawValue: 6)
    public static let q5_1 = GGMLType(rawValue: 7)
    public static let q8_0 = GGMLType(rawValue: 8)
    public static let q8_1 = GGMLType(rawValue: 9)
    public static let q2_K = GGMLType(rawValue: 10)
    public static let q3_K = GGMLType(rawValue: 11)
    public static let q4_K = GGMLType(rawValue: 12)
    public static let q5_K = GGMLType(rawValue: 13)
    public static let q6_K = GGMLType(rawValue: 14)
    public static let q8_K = GGMLType(rawValue: 15)
    public static let iq2_XXS = GGMLType(rawValue: 16)
    public static let iq2_XS = GGMLType(rawValue: 17)
    public static let iq3_XXS = GGMLType(rawValue: 18)
    public static let iq1_S = GGMLType(rawValue: 19)
    public static let iq4_NL = GGMLType(rawValue: 20)
    public static let iq3_S = GGMLType(rawValue: 21)
    public static let iq2_S = GGMLType(rawValue: 22)
    public static let iq4_XS = GGMLType(rawValue: 23)
    public static let i8 = GGMLType(rawValue: 24)
    public static let i16 = GGMLType(rawValue: 25)
    public static let i32 = GGMLType(rawValue: 26)
    public static let i64 = GGMLType(rawValue: 27)
    public static let f64 = GGMLType(rawValue: 28)
    public static let iq1_M = GGMLType(rawValue: 29)
    public static let bf16 = GGMLType(rawValue: 30)
    public static let tq1_0 = GGMLType(rawValue: 34)
    public static let tq2_0 = GGMLType(rawValue: 35)
    public static let mxfp4 = GGMLType(rawValue: 39)

    /// The block types WeightPack both reads and writes, in ggml's order.
    public static let quantizable: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]
    /// Every type whose values WeightPack can decode.
    public static let readable: [GGMLType] =
        [.f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64] + quantizable + [.iq4_NL, .iq4_XS, .tq1_0, .tq2_0, .mxfp4]

    private struct Traits {
        var name: String
        var blockValues: Int
        var blockBytes: Int
    }

    private static let table: [UInt32: Traits] = [
        0: Traits(name: "F32", blockValues: 1, blockBytes: 4),
        1: Traits(name: "F16", blockValues: 1, blockBytes: 2),
        2: Traits(name: "Q4_0", blockValues: 32, blockBytes: 18),
        3: Traits(name: "Q4_1", blockValues: 32, blockBytes: 20),
        6: Traits(name: "Q5_0", blockValues: 32, blockBytes: 22),
        7: Traits(name: "Q5_1", blockValues: 32, blockBytes: 24),
        8: Traits(name: "Q8_0", blockValues: 32, blockBytes: 34),
        9: Traits(name: "Q8_1", blockValues: 32, blockBytes: 40),
        10: Traits(name: "Q2_K", blockValues: 256, blockBytes: 84),
        11: Traits(name: "Q3_K", blockValues: 256, blockBytes: 110),
        12: Traits(name: "Q4_K", blockValues: 256, blockBytes: 144),
        13: Traits(name: "Q5_K", blockValues: 256, blockBytes: 176),
        14: Traits(name: "Q6_K", blockValues: 256, blockBytes: 210),
        15: Traits(name: "Q8_K", blockValues: 256, blockBytes: 292),
        16: Traits(name: "IQ2_XXS", blockValues: 256, blockBytes: 66),
        17: Traits(name: "IQ2_XS", blockValues: 256, blockBytes: 74),
        18: Traits(name: "IQ3_XXS", blockValues: 256, blockBytes: 98),
        19: Traits(name: "IQ1_S", blockValues: 256, blockBytes: 50),
        20: Traits(name: "IQ4_NL", blockValues: 32, blockBytes: 18),
        21: Traits(name: "IQ3_S", blockValues: 256, blockBytes: 110),
        22: Traits(name: "IQ2_S", blockValues: 256, blockBytes: 82),
        23: Traits(name: "IQ4_XS", blockValues: 256, blockBytes: 136),
        24: Traits(name: "I8", blockValues: 1, blockBytes: 1),
        25: Traits(name: "I16", blockValues: 1, blockBytes: 2),
        26: Traits(name: "I32", blockValues: 1, blockBytes: 4),
        27: Traits(name: "I64", blockValues: 1, blockBytes: 8),
        28: Traits(name: "F64", blockValues: 1, blockBytes: 8),
        29: Traits(name: "IQ1_M", blockValues: 256, blockBytes: 56),
        30: Traits(name: "BF16", blockValues: 1, blockBytes: 2),
        34: Traits(name: "TQ1_0", blockValues: 256, blockBytes: 54),
        35: Traits(name: "TQ2_0", blockValues: 256, blockBytes: 66),
        39: Traits(name: "MXFP4", blockValues: 32, blockBytes: 17),
    ]

    /// Whether ggml defines this type id (as of ggml 0.9.8); unknown ids have no size.
    public var isKnown: Bool { Self.table[rawValue] != nil }

    /// ggml's name (`Q4_K`), or `type N` for an id ggml does not define.
    public var name: String { Self.table[rawValue]?.name ?? "type \(rawValue)" }
    public var description: String { name }

    /// Values per block (1 for plain types); 0 for an unknown id.
    public var blockValues: Int { Self.table[rawValue]?.blockValues ?? 0 }
    /// Bytes per block; 0 for an unknown id.
    public var blockBytes: Int { Self.table[rawValue]?.blockBytes ?? 0 }

    /// Whether values are stored in multi-value blocks with scales (not a plain element type).
    public var isBlockQuantized: Bool { blockValues > 1 }

    /// Whether WeightPack can decode the values.
    public var isReadable: Bool { Self.readable.contains(self) }

    /// Bits per weight, `8 · blockBytes / blockValues` (4.5 for Q4_0, 4.5 for Q4_K).
    public var bitsPerWeight: Double { blockValues == 0 ? 0 : 8 * Double(blockBytes) / Double(blockValues) }

    /// The safetensors dtype that holds this type's elements unchanged, for plain types.
    public var plainDType: DType? {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .f64: .f64
        case .i8: .i8
        case .i16: .i16
        case .i32: .i32
        case .i64: .i64
        default: nil
        }
    }

    /// The ggml type of a plain dtype.
    public init?(plain dtype: DType) {
        switch dtype {
        case .f32: self = .f32
        case .f16: self = .f16
        case .bf16: self = .bf16
        case .f64: self = .f64
        case .i8: self = .i8
        case .i16: self = .i16
        case .i32: self = .i32
        case .i64: self = .i64
        default: return nil
        }
    }

    /// Parses a type name as users and stable-diffusion.cpp spell it (`q4_k`, `Q4_K`, `f16`).
    public init?(name: String) {
        let upper = name.uppercased()
        guard let entry = Self.table.first(where: { $0.value.name == upper }) else { return nil }
        self.init(rawValue: entry.key)
    }

    /// Bytes of `count` values, overflow-checked; `nil` when `count` is not a whole number of
    /// blocks, the type is unknown, or the size overflows.
    public func byteCount(values count: Int) -> Int? {
        let values = blockValues
        guard values > 0, count >= 0, count % values == 0 else { return nil }
        let (bytes, overflow) = (count / values).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}
