import SafePickle
import TensorCore

/// PyTorch storage classes and dtypes, mapped to safetensors dtypes
/// (`torch/storage.py` `_dtype_to_storage_type_map`, `torch/_utils.py`).
enum TorchDTypes {
    /// A storage class: its element dtype (`nil` for `UntypedStorage`, whose elements are bytes).
    struct StorageClass {
        var dtype: DType?
        var elementSize: Int
        var name: String
    }

    /// The storage class a persistent id names. Torch maps any `…Storage` global through its
    /// storage table whatever the module (`torch.cuda.FloatStorage` too), so only the name counts
    /// once the module is under `torch`.
    static func storageClass(_ global: PickleGlobal) throws(FormatError) -> StorageClass {
        guard global.module == "torch" || global.module.hasPrefix("torch.") else {
            throw FormatError(.invalidPickle, "storage type \(global.qualifiedName) is not a torch storage class")
        }
        let dtype: DType?
        switch global.name {
        case "DoubleStorage": dtype = .f64
        case "FloatStorage": dtype = .f32
        case "HalfStorage": dtype = .f16
        case "BFloat16Storage": dtype = .bf16
        case "LongStorage": dtype = .i64
        case "IntStorage": dtype = .i32
        case "ShortStorage": dtype = .i16
        case "CharStorage": dtype = .i8
        case "ByteStorage": dtype = .u8
        case "BoolStorage": dtype = .bool
        case "ComplexFloatStorage": dtype = .c64
        case "UntypedStorage": return StorageClass(dtype: nil, elementSize: 1, name: global.name)
        case "ComplexDoubleStorage":
            throw FormatError(.unsupportedDType, "complex128 storages (\(global.qualifiedName)) have no safetensors dtype")
        case "QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage":
            throw FormatError(.unsupportedTensor, "quantized storages (\(global.qualifiedName)) are not supported")
        default:
            throw FormatError(.unsupportedDType, "unknown storage type \(global.qualifiedName)")
        }
        return StorageClass(dtype: dtype, elementSize: dtype!.byteWidth!, name: global.name)
    }

    /// The dtype a `torch.<dtype>` global names (the `dtype` argument of `_rebuild_tensor_v3`).
    static func dtype(_ global: PickleGlobal) throws(FormatError) -> DType {
        guard global.module == "torch" else {
            throw FormatError(.invalidPickle, "tensor dtype \(global.qualifiedName) is not a torch dtype")
        }
        switch global.name {
        case "float32", "float": return .f32
        case "float64", "double": return .f64
        case "float16", "half": return .f16
        case "bfloat16": return .bf16
        case "int64", "long": return .i64
        case "int32", "int": return .i32
        case "int16", "short": return .i16
        case "int8": return .i8
        case "uint8": return .u8
        case "bool": return .bool
        case "uint16": return .u16
        case "uint32": return .u32
        case "uint64": return .u64
        case "complex64", "cfloat": return .c64
        case "float8_e5m2": return .f8E5M2
        case "float8_e4m3fn": return .f8E4M3
        case "float8_e5m2fnuz": return .f8E5M2FNUZ
        case "float8_e4m3fnuz": return .f8E4M3FNUZ
        case "float8_e8m0fnu": return .f8E8M0
        default:
            throw FormatError(.unsupportedDType, "tensor dtype torch.\(global.name) is not supported")
        }
    }

    /// The size of the unit to byte-swap for a big-endian storage (complex numbers swap each half).
    static func swapUnit(_ dtype: DType) -> Int {
        switch dtype {
        case .c64: 4
        default: dtype.byteWidth ?? 1
        }
    }
}
