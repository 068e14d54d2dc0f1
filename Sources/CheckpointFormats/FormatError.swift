import MappedIO

/// An error reading or writing a model file: a stable code, a message, the file, the tensor
/// where there is one, and the underlying cause.
public struct FormatError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code. A struct over a private enum so codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            // safetensors, mirroring the reference crate's error list
            case headerTooSmall, headerTooLarge, invalidHeaderLength, invalidHeaderUTF8, invalidHeaderJSON
            case headerNotObject, duplicateKey, invalidMetadata, unknownDType, invalidTensorEntry
            case invalidOffset, tensorInvalidInfo, validationOverflow, misalignedSlice, incompleteBuffer
            // any format
            case unrecognizedFormat, tensorNotFound, reservedName, duplicateTensor, unsupportedDType
            case unsupportedConversion, invalidArgument, tooLarge, unsafePath
            // .wpk
            case badMagic, unsupportedVersion, corruptHeader, checksumMismatch, corruptData
            // PyTorch archives and pickles
            case invalidArchive, invalidPickle, unsafeGlobal, unsupportedTensor, storageOutOfRange
            // the file system
            case io
            // GGUF (Formats/gguf.md)
            case ggufTruncated, ggufCountLimit, ggufStringTooLong, ggufArrayTooLong, ggufNestingTooDeep, ggufUnknownValueType
            case ggufInvalidAlignment, ggufInvalidDimensions, ggufBlockMisfit, ggufTensorPastEnd, ggufTensorOverlap, ggufInvalidOriginalShape
        }
        fileprivate let value: Value
        public var description: String { value.rawValue }

        /// The file is shorter than the 8-byte header length.
        public static let headerTooSmall = Code(value: .headerTooSmall)
        /// The declared header is larger than the 100 MB limit.
        public static let headerTooLarge = Code(value: .headerTooLarge)
        /// The declared header runs past the end of the file.
        public static let invalidHeaderLength = Code(value: .invalidHeaderLength)
        /// The header is not valid UTF-8.
        public static let invalidHeaderUTF8 = Code(value: .invalidHeaderUTF8)
        /// The header is not JSON.
        public static let invalidHeaderJSON = Code(value: .invalidHeaderJSON)
        /// The header is JSON but not an object.
        public static let headerNotObject = Code(value: .headerNotObject)
        /// A key appears twice in one JSON object.
        public static let duplicateKey = Code(value: .duplicateKey)
        /// `__metadata__` is not an object of strings.
        public static let invalidMetadata = Code(value: .invalidMetadata)
        /// A dtype name we do not know.
        public static let unknownDType = Code(value: .unknownDType)
        /// A tensor entry lacks a field or has one of the wrong type.
        public static let invalidTensorEntry = Code(value: .invalidTensorEntry)
        /// Tensor data offsets leave a hole, overlap, or run backwards.
        public static let invalidOffset = Code(value: .invalidOffset)
        /// A tensor's byte length disagrees with its shape and dtype.
        public static let tensorInvalidInfo = Code(value: .tensorInvalidInfo)
        /// A size computation overflows 64 bits.
        public static let validationOverflow = Code(value: .validationOverflow)
        /// A sub-byte dtype whose elements do not fill whole bytes.
        public static let misalignedSlice = Code(value: .misalignedSlice)
        /// The data section is not exactly covered by the tensors (bytes missing or left over).
        public static let incompleteBuffer = Code(value: .incompleteBuffer)

        /// No reader recognises the input.
        public static let unrecognizedFormat = Code(value: .unrecognizedFormat)
        /// No tensor of that name.
        public static let tensorNotFound = Code(value: .tensorNotFound)
        /// A tensor name a format reserves (`__metadata__`).
        public static let reservedName = Code(value: .reservedName)
        /// Two tensors with the same name.
        public static let duplicateTensor = Code(value: .duplicateTensor)
        /// A dtype the operation cannot handle.
        public static let unsupportedDType = Code(value: .unsupportedDType)
        /// A requested conversion that is not defined.
        public static let unsupportedConversion = Code(value: .unsupportedConversion)
        /// An option value that makes no sense for this input.
        public static let invalidArgument = Code(value: .invalidArgument)
        /// A file or a count beyond a documented limit (Docs/limits.md), refused rather than guessed around.
        public static let tooLarge = Code(value: .tooLarge)
        /// A recorded relative path that is absolute, climbs out with `..`, or holds a control character.
        public static let unsafePath = Code(value: .unsafePath)

        /// Not a `.wpk` file (or its magic is damaged).
        public static let badMagic = Code(value: .badMagic)
        /// A `.wpk` major version this reader does not know.
        public static let unsupportedVersion = Code(value: .unsupportedVersion)
        /// A `.wpk` header that fails validation.
        public static let corruptHeader = Code(value: .corruptHeader)
        /// Stored bytes whose checksum does not match the header.
        public static let checksumMismatch = Code(value: .checksumMismatch)
        /// Compressed data that does not decompress to what the header says.
        public static let corruptData = Code(value: .corruptData)

        /// A zip or legacy archive that is malformed or uses features we refuse.
        public static let invalidArchive = Code(value: .invalidArchive)
        /// A pickle that is malformed or exceeds a limit.
        public static let invalidPickle = Code(value: .invalidPickle)
        /// A pickle names a dangerous global and unsafe globals were not allowed.
        public static let unsafeGlobal = Code(value: .unsafeGlobal)
        /// A tensor kind we do not read (quantized, sparse, …).
        public static let unsupportedTensor = Code(value: .unsupportedTensor)
        /// A tensor view that reaches outside its storage.
        public static let storageOutOfRange = Code(value: .storageOutOfRange)

        /// A file-system error; `underlying` is the `IOError`.
        public static let io = Code(value: .io)

        /// GGUF: a count, string, value or table runs past the end of the file.
        public static let ggufTruncated = Code(value: .ggufTruncated)
        /// GGUF: more tensors or metadata entries than the reader accepts.
        public static let ggufCountLimit = Code(value: .ggufCountLimit)
        /// GGUF: a string longer than the reader accepts.
        public static let ggufStringTooLong = Code(value: .ggufStringTooLong)
        /// GGUF: an array longer than the reader accepts or than the file can hold.
        public static let ggufArrayTooLong = Code(value: .ggufArrayTooLong)
        /// GGUF: arrays nested deeper than the reader accepts.
        public static let ggufNestingTooDeep = Code(value: .ggufNestingTooDeep)
        /// GGUF: a metadata value type id the format does not define.
        public static let ggufUnknownValueType = Code(value: .ggufUnknownValueType)
        /// GGUF: `general.alignment` that is not a power-of-two `uint32` within bounds.
        public static let ggufInvalidAlignment = Code(value: .ggufInvalidAlignment)
        /// GGUF: a tensor with no dimensions or more than four.
        public static let ggufInvalidDimensions = Code(value: .ggufInvalidDimensions)
        /// GGUF: a tensor whose rows do not divide into its type's blocks.
        public static let ggufBlockMisfit = Code(value: .ggufBlockMisfit)
        /// GGUF: a tensor's data reaches past the end of the file.
        public static let ggufTensorPastEnd = Code(value: .ggufTensorPastEnd)
        /// GGUF: two tensors' data overlap.
        public static let ggufTensorOverlap = Code(value: .ggufTensorOverlap)
        /// GGUF: `comfy.gguf.orig_shape.<name>` that is not an integer array of the tensor's size.
        public static let ggufInvalidOriginalShape = Code(value: .ggufInvalidOriginalShape)
    }

    public var code: Code
    public var message: String
    public var path: String?
    public var tensor: String?
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, path: String? = nil, tensor: String? = nil, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.tensor = tensor
        self.underlying = underlying
    }

    /// Wraps a file-system error.
    public init(_ error: IOError) {
        self.init(.io, error.description, path: error.path, underlying: error)
    }

    /// An error thrown while writing `path`, as a `FormatError`: file-system errors wrapped,
    /// format errors naming the file, anything else reported as an I/O failure.
    public static func writing(_ error: any Error, to path: String) -> FormatError {
        switch error {
        case let io as IOError: FormatError(io)
        case let format as FormatError: format.inFile(path)
        // Another error (a caller's check before commit): kept as the cause, for the caller.
        default: FormatError(.io, "\(error)", path: path, underlying: error)
        }
    }

    /// The same error with the file named, unless it already names one.
    public func inFile(_ path: String) -> FormatError {
        var copy = self
        if copy.path == nil { copy.path = path }
        return copy
    }

    /// The same error, naming the tensor it happened in.
    public func inTensor(_ name: String) -> FormatError {
        var copy = self
        if copy.tensor == nil { copy.tensor = name }
        return copy
    }

    public var description: String {
        var text = ""
        if let path, code != .io { text += "\(path): " }
        text += message
        if let tensor, !message.contains("'\(tensor)'") { text += " (tensor '\(tensor)')" }
        return text
    }
}
