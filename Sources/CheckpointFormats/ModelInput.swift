import MappedIO
import TensorCore

#if canImport(Glibc)
import Glibc
#endif

/// Opens any supported input by looking at its bytes (not only its name).
public enum ModelInput {
    /// What an input is.
    public enum Kind: String, Sendable {
        case safetensors, shardedSafetensors = "safetensors-index", wpk, torchZip = "ckpt", torchLegacy = "ckpt-legacy", diffusers, folder, gguf
    }

    /// Options for opening inputs.
    public struct Options: Sendable {
        /// Read checkpoints whose pickles name dangerous globals (nothing is ever executed).
        public var allowUnsafeGlobals = false
        /// For diffusers folders: prefer weight files of this variant (`fp16`).
        public var variant: String?
        /// PyTorch checkpoints: refuse tensors that would materialise more than this many times
        /// the storage bytes they view (`TorchCheckpoint.init(maximumExpansion:)`).
        public var maximumExpansion = TorchCheckpoint.defaultMaximumExpansion
        public init(
            allowUnsafeGlobals: Bool = false, variant: String? = nil,
            maximumExpansion: Int = TorchCheckpoint.defaultMaximumExpansion
        ) {
            self.allowUnsafeGlobals = allowUnsafeGlobals
            self.variant = variant
            self.maximumExpansion = maximumExpansion
        }
    }

    /// Opens `path` with the reader its content calls for.
    public static func open(_ path: String, options: Options = Options()) throws(FormatError) -> any TensorStore {
        let kind = try detect(path)
        switch kind {
        case .safetensors: return try SafetensorsFile(path: path)
        case .shardedSafetensors: return try ShardedSafetensors(indexPath: path)
        case .wpk: return try WPKFile(path: path)
        case .gguf: return try GGUFFile(path: path)
        case .torchZip, .torchLegacy: return try openTorch(path, options: options)
        case .diffusers, .folder:
            return try DiffusersFolder(path: path, variant: options.variant, allowUnsafeGlobals: options.allowUnsafeGlobals)
        }
    }

    /// Decides what `path` holds.
    ///
    /// - Throws: `.io` with `IOError` `.notFound`, `.permissionDenied`, `.symlinkLoop`, or
    ///   `.notRegularFile` for a FIFO, socket or device (refused before it is opened, since
    ///   opening a FIFO blocks); `.unrecognizedFormat`.
    public static func detect(_ path: String) throws(FormatError) -> Kind {
        let size: Int
        do throws(IOError) {
            switch try FileCheck.kind(of: path) {
            case .directory:
                return isRegularFile(path + "/model_index.json") ? .diffusers : .folder
            case .other:
                throw IOError(.notRegularFile, path: path, call: "stat")
            case .regularFile(let bytes):
                size = bytes
            }
        } catch {
            throw FormatError(error)
        }
        if path.hasSuffix(".safetensors.index.json") { return .shardedSafetensors }
        let head = try readHead(path, count: 16)
        if head.starts(with: WPKLayout.magic) { return .wpk }
        if head.starts(with: Array("GGUF".utf8)) { return .gguf }
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return .torchZip }
        // A legacy torch file starts with the pickled magic number: PROTO 2, LONG1 10 bytes.
        if head.starts(with: [0x80, 0x02, 0x8A, 0x0A]) { return .torchLegacy }
        if path.hasSuffix(".safetensors") || looksLikeSafetensors(head, fileSize: size) { return .safetensors }
        // torch.load unpickles any non-zip file from byte 0, whatever its first opcode.
        if [".ckpt", ".pt", ".pth", ".bin"].contains(where: path.hasSuffix), let first = head.first,
            TorchCheckpoint.startsLikePickle(first)
        {
            return .torchLegacy
        }
        throw FormatError(.unrecognizedFormat, "not a safetensors, PyTorch, GGUF or .wpk file, nor a diffusers folder", path: path)
    }

    private static func looksLikeSafetensors(_ head: [UInt8], fileSize: Int) -> Bool {
        guard head.count >= 9 else { return false }
        let n = head[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        return fileSize >= 8 && n >= 2 && n <= UInt64(fileSize - 8) && [UInt8(ascii: "{"), 0x20, 0x09, 0x0A, 0x0D].contains(head[8])
    }

    private static func readHead(_ path: String, count: Int) throws(FormatError) -> [UInt8] {
        do { return try FileCheck.readPrefix(of: path, count: count) } catch { throw FormatError(error) }
    }
}
