/// The element type of a tensor, named as safetensors names it.
///
/// The raw value is the safetensors dtype string (`"F32"`, `"BF16"`, …). Sub-byte types
/// (`F4`, `F6_*`) are carried by name so files holding them can be read and copied, but
/// they cannot be converted or computed with.
public enum DType: String, Sendable, CaseIterable, Hashable, Codable {
    case bool = "BOOL"
    case f4 = "F4"
    case f6E2M3 = "F6_E2M3"
    case f6E3M2 = "F6_E3M2"
    case u8 = "U8"
    case i8 = "I8"
    case f8E5M2 = "F8_E5M2"
    case f8E4M3 = "F8_E4M3"
    case f8E8M0 = "F8_E8M0"
    case f8E4M3FNUZ = "F8_E4M3FNUZ"
    case f8E5M2FNUZ = "F8_E5M2FNUZ"
    case i16 = "I16"
    case u16 = "U16"
    case f16 = "F16"
    case bf16 = "BF16"
    case i32 = "I32"
    case u32 = "U32"
    case f32 = "F32"
    case c64 = "C64"
    case f64 = "F64"
    case i64 = "I64"
    case u64 = "U64"

    /// Parses a safetensors dtype name; `nil` for a name we do not know.
    public init?(name: String) { self.init(rawValue: name) }

    /// The safetensors name of this dtype.
    public var name: String { rawValue }

    /// Bits per element.
    public var bitWidth: Int {
        switch self {
        case .f4: 4
        case .f6E2M3, .f6E3M2: 6
        case .bool, .u8, .i8, .f8E5M2, .f8E4M3, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ: 8
        case .i16, .u16, .f16, .bf16: 16
        case .i32, .u32, .f32: 32
        case .c64, .f64, .i64, .u64: 64
        }
    }

    /// Bytes per element, or `nil` for sub-byte types.
    public var byteWidth: Int? { bitWidth % 8 == 0 ? bitWidth / 8 : nil }

    /// Whether values are real floating-point numbers that we can convert between
    /// (`F16`, `BF16`, `F32`, `F64`).
    public var isConvertibleFloat: Bool {
        switch self {
        case .f16, .bf16, .f32, .f64: true
        default: false
        }
    }

    /// Whether the type is any floating-point type, including fp8 and sub-byte floats.
    public var isFloatingPoint: Bool {
        switch self {
        case .f4, .f6E2M3, .f6E3M2, .f8E5M2, .f8E4M3, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ,
            .f16, .bf16, .f32, .f64, .c64:
            true
        default: false
        }
    }

    /// Whether the type holds integers or booleans (never cast by a conversion).
    public var isInteger: Bool {
        switch self {
        case .bool, .u8, .i8, .i16, .u16, .i32, .u32, .i64, .u64: true
        default: false
        }
    }

    /// The PyTorch name of the type, for messages.
    public var torchName: String {
        switch self {
        case .bool: "bool"
        case .u8: "uint8"
        case .i8: "int8"
        case .i16: "int16"
        case .u16: "uint16"
        case .f16: "float16"
        case .bf16: "bfloat16"
        case .i32: "int32"
        case .u32: "uint32"
        case .f32: "float32"
        case .f64: "float64"
        case .i64: "int64"
        case .u64: "uint64"
        case .c64: "complex64"
        case .f8E5M2: "float8_e5m2"
        case .f8E4M3: "float8_e4m3fn"
        case .f8E8M0: "float8_e8m0fnu"
        case .f8E4M3FNUZ: "float8_e4m3fnuz"
        case .f8E5M2FNUZ: "float8_e5m2fnuz"
        case .f4: "float4_e2m1fn_x2"
        case .f6E2M3: "float6_e2m3"
        case .f6E3M2: "float6_e3m2"
        }
    }
}
