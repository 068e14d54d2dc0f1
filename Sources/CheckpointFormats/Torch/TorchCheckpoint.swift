import MappedIO
import SafePickle
import TensorCore

/// A PyTorch checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`) read without executing its pickle.
///
/// Zip archives (PyTorch ≥ 1.6) and the legacy stacked-pickle format (≤ 1.5,
/// `_use_new_zipfile_serialization=False`) are read; TorchScript archives and tar-format
/// files are refused. Tensors come from `_rebuild_tensor{,_v2,_v3}`,
/// `_rebuild_parameter{,_with_state}` and `_rebuild_from_type_v2`; their views are checked
/// against their storages before any byte is touched. Contiguous tensors are served
/// zero-copy from the mapping; strided ones are gathered, big-endian ones byte-swapped.
/// See Docs/torch-checkpoints.md.
public final class TorchCheckpoint: TensorStore {
    /// `ckpt` for zip archives, `ckpt-legacy` for the legacy format.
    public let formatName: String
    public let path: String
    public let tensors: [TensorDescriptor]
    /// Non-tensor entries (`epoch`, `global_step`, callbacks…) rendered as short strings, by
    /// '.'-joined key path.
    public let metadata: [String: String]
    /// The dangerous globals that were present and allowed (`allowUnsafeGlobals`); empty otherwise.
    public let allowedUnsafeGlobals: [PickleScanReport.Finding]
    /// Whether the storages were written big-endian (zip `byteorder` = `big`).
    public let isBigEndian: Bool

    let file: MappedFile
    let recipes: [String: TorchTensorRecipe]

    /// Opens a checkpoint.
    ///
    /// - Parameters:
    ///   - path: the file.
    ///   - allowUnsafeGlobals: read a file whose pickles name dangerous globals. Nothing is
    ///     executed either way; the default refuses such files because the file was made to
    ///     run code in whoever loads it with torch.
    ///   - limits: bounds for the pickle machine.
    /// - Throws: `FormatError`: `.unsafeGlobal` (naming the global), `.invalidArchive`,
    ///   `.invalidPickle`, `.unsupportedTensor`, `.unsupportedDType`, `.storageOutOfRange`,
    ///   `.duplicateTensor`, `.checksumMismatch`, `.io`.
    /// - Complexity: O(pickle size + number of zip entries); no tensor data is read.
    public init(path: String, allowUnsafeGlobals: Bool = false, limits: PickleLimits = .default) throws(FormatError) {
        self.path = path
        do throws(FormatError) {
            let file: MappedFile
            do { file = try MappedFile(path: path) } catch { throw FormatError(error) }
            self.file = file
            let kind = try TorchCheckpoint.kind(of: file)
            if kind == .zip, try TorchCheckpoint.isTorchScript(TorchArchive(file: file)) {
                throw TorchCheckpoint.torchScriptError
            }
            let report = try TorchCheckpoint.scan(file: file, kind: kind, limits: limits)
            if let bad = report.dangerous.first, !allowUnsafeGlobals {
                throw TorchCheckpoint.unsafe(bad, count: report.dangerous.count)
            }
            allowedUnsafeGlobals = report.dangerous
            let loaded: Loaded
            switch kind {
            case .zip:
                formatName = "ckpt"
                loaded = try TorchCheckpoint.loadZip(file: file, limits: limits, allowUnsafeGlobals: allowUnsafeGlobals)
            case .pickle:
                throw FormatError(.invalidArchive, "a protocol 0/1 pickle, not a PyTorch checkpoint")
            case .legacy:
                formatName = "ckpt-legacy"
                loaded = try TorchCheckpoint.loadLegacy(file: file, limits: limits, allowUnsafeGlobals: allowUnsafeGlobals)
            }
            var recipes: [String: TorchTensorRecipe] = [:]
            for recipe in loaded.tensors {
                guard recipes.updateValue(recipe, forKey: recipe.descriptor.name) == nil else {
                    throw FormatError(.duplicateTensor, "two tensors are named '\(recipe.descriptor.name)'", tensor: recipe.descriptor.name)
                }
            }
            self.recipes = recipes
            tensors = loaded.tensors.map(\.descriptor)
            metadata = loaded.metadata
            isBigEndian = loaded.bigEndian
        } catch {
            throw error.inFile(path)
        }
    }

    /// The tensor called `name`: zero-copy for contiguous little-endian views, otherwise
    /// gathered (and byte-swapped) into a new buffer.
    /// - Throws: `FormatError.tensorNotFound`.
    /// - Complexity: O(1) zero-copy; O(tensor bytes) when gathered.
    public func tensor(named name: String) throws -> TensorView {
        guard let recipe = recipes[name] else {
            throw FormatError(.tensorNotFound, "no tensor named '\(name)'", path: path, tensor: name)
        }
        return materialize(recipe)
    }

    public func descriptor(named name: String) -> TensorDescriptor? { recipes[name]?.descriptor }

    /// The key of the storage a tensor views (tensors sharing a storage share the key).
    public func storageKey(of name: String) -> String? { recipes[name]?.storageKey }

    // MARK: - internals

    enum Kind { case zip, legacy, pickle }

    struct Loaded {
        var tensors: [TorchTensorRecipe]
        var metadata: [String: String]
        var bigEndian: Bool
    }

    static func unsafe(_ finding: PickleScanReport.Finding, count: Int) -> FormatError {
        let what = finding.isResolved ? finding.qualifiedName : "an unresolvable \(finding.opcode) (operands hidden from static analysis)"
        let more = count > 1 ? " and \(count - 1) more" : ""
        return FormatError(
            .unsafeGlobal,
            "refusing a pickle that names the dangerous global \(what) (\(finding.opcode) at byte \(finding.offset) of \(finding.entry))\(more); nothing was executed (--allow-unsafe-globals reads its tensors anyway, still executing nothing)")
    }

    /// What the file is, from its first bytes.
    static func kind(of file: MappedFile) throws(FormatError) -> Kind {
        try file.withUnsafeBytes { (raw) throws(FormatError) -> Kind in
            if raw.count >= 4, raw[0] == 0x50, raw[1] == 0x4B, raw[2] == 0x03, raw[3] == 0x04 { return .zip }
            if raw.count >= 262, raw[257] == 0x75, raw[258] == 0x73, raw[259] == 0x74, raw[260] == 0x61, raw[261] == 0x72 {
                throw FormatError(.invalidArchive, "tar-format PyTorch checkpoints (PyTorch 0.1.x) are not supported; re-save with a current torch.save")
            }
            if raw.count >= 2, raw[0] == 0x80 { return .legacy }
            // Protocol 0/1 pickles start with a data or MARK opcode; torch never writes them, but
            // `scan` should still list their globals.
            if let first = raw.first, Array("(c]})NILSVXUTKJMFGld".utf8).contains(first) { return .pickle }
            if raw.count >= 8, Array(raw[0..<8]) == Array("PYTORCH1".utf8) {
                throw FormatError(.invalidArchive, "this is the PyTorch 1.0 preview archive format, which torch itself no longer reads")
            }
            throw FormatError(.invalidArchive, "not a PyTorch checkpoint: neither a zip archive nor a legacy pickle")
        }
    }

    static func pickleError(_ error: PickleError, entry: String) -> FormatError {
        FormatError(.invalidPickle, "\(entry): \(error.message) (at byte \(error.offset))", underlying: error)
    }

    /// Checks the globals the machine actually built against the classifier (the static scan
    /// already did; this covers any operand the scan could not see the same way).
    static func checkBuiltGlobals(_ document: PickleDocument, entry: String, allowUnsafeGlobals: Bool) throws(FormatError) {
        guard !allowUnsafeGlobals else { return }
        for g in document.globals where g.safety == .dangerous {
            throw unsafe(PickleScanReport.Finding(
                entry: entry, module: g.module, name: g.name, offset: g.offset, opcode: g.opcode.name,
                safety: .dangerous, isResolved: true), count: 1)
        }
    }

    /// Finds tensors and metadata in a loaded object pickle.
    static func extract(
        _ document: PickleDocument, storages: [PickleValueID: TorchStorage]
    ) throws(FormatError) -> (tensors: [TorchTensorRecipe], metadata: [String: String]) {
        var reader = TorchObjectReader(document: document, storages: storages)
        var tensors: [TorchTensorRecipe] = []
        var metadata: [String: String] = [:]
        let root = document.root
        // A wrapper: `state_dict` (Lightning, LDM), else `model`/`module` holding tensors.
        var tensorRoot: (key: String, value: PickleValueID)?
        if let items = reader.dictItems(root) {
            if let sd = items.first(where: { $0.key == "state_dict" }), reader.dictItems(sd.value) != nil || reader.holdsTensors(sd.value) {
                tensorRoot = sd
            } else {
                for key in ["model", "module", "model_state_dict", "ema"] {
                    if let m = items.first(where: { $0.key == key }), reader.holdsTensors(m.value) {
                        tensorRoot = m
                        break
                    }
                }
            }
            if let tensorRoot {
                try reader.collect(tensorRoot.value, prefix: "", tensors: &tensors, metadata: &metadata, tensorsAllowed: true)
                for (key, value) in items where key != tensorRoot.key {
                    try reader.collect(value, prefix: key, tensors: &tensors, metadata: &metadata, tensorsAllowed: false)
                }
                return (tensors, metadata)
            }
        }
        try reader.collect(root, prefix: "", tensors: &tensors, metadata: &metadata, tensorsAllowed: true)
        return (tensors, metadata)
    }

    private func materialize(_ recipe: TorchTensorRecipe) -> TensorView {
        let count = recipe.descriptor.byteCount
        let start = recipe.storageRange.lowerBound + recipe.byteOffset
        if recipe.isContiguous && (!isBigEndian || TorchDTypes.swapUnit(recipe.descriptor.dtype) == 1) {
            // Checked against the storage (and the storage against the file) when opened.
            return TensorView(descriptor: recipe.descriptor, bytes: file.bytes(in: start..<(start + count))!)
        }
        let output = OwnedBuffer(byteCount: count)
        let swapUnit = isBigEndian ? TorchDTypes.swapUnit(recipe.descriptor.dtype) : 1
        file.withUnsafeBytes { raw in
            let source = raw.baseAddress! + recipe.storageRange.lowerBound
            let destination = output.mutableBytes.baseAddress!
            if recipe.isContiguous {
                destination.copyMemory(from: source + recipe.byteOffset, byteCount: count)
            } else {
                TorchCheckpoint.gather(recipe, from: source, into: destination)
            }
            if swapUnit > 1 { TorchCheckpoint.byteSwap(destination, count: count, unit: swapUnit) }
        }
        return TensorView(descriptor: recipe.descriptor, bytes: TensorBytes(owner: output, buffer: output.bytes))
    }

    /// Copies a strided view into contiguous row-major order (every index was bounds-checked
    /// against the storage when the recipe was made).
    static func gather(_ recipe: TorchTensorRecipe, from storage: UnsafeRawPointer, into output: UnsafeMutableRawPointer) {
        let e = recipe.elementSize
        let sizes = recipe.sizes, strides = recipe.strides
        let rank = sizes.count
        let total = recipe.descriptor.byteCount / max(e, 1)
        guard total > 0 else { return }
        if rank == 0 {
            output.copyMemory(from: storage + recipe.byteOffset, byteCount: e)
            return
        }
        var index = [Int](repeating: 0, count: rank)
        let innerSize = sizes[rank - 1], innerStride = strides[rank - 1] * e
        var outOffset = 0
        var rowStart = recipe.byteOffset
        var rows = total / innerSize
        while rows > 0 {
            var p = rowStart
            if innerStride == e {
                output.advanced(by: outOffset).copyMemory(from: storage + p, byteCount: innerSize * e)
                outOffset += innerSize * e
            } else {
                for _ in 0..<innerSize {
                    output.advanced(by: outOffset).copyMemory(from: storage + p, byteCount: e)
                    outOffset += e
                    p += innerStride
                }
            }
            rows -= 1
            // Advance the outer index (odometer) and recompute the row start.
            var d = rank - 2
            while d >= 0 {
                index[d] += 1
                rowStart += strides[d] * e
                if index[d] < sizes[d] { break }
                rowStart -= strides[d] * e * sizes[d]
                index[d] = 0
                d -= 1
            }
        }
    }

    static func byteSwap(_ p: UnsafeMutableRawPointer, count: Int, unit: Int) {
        var i = 0
        while i + unit <= count {
            var a = i, b = i + unit - 1
            while a < b {
                let t = p.load(fromByteOffset: a, as: UInt8.self)
                p.storeBytes(of: p.load(fromByteOffset: b, as: UInt8.self), toByteOffset: a, as: UInt8.self)
                p.storeBytes(of: t, toByteOffset: b, as: UInt8.self)
                a += 1; b -= 1
            }
            i += unit
        }
    }
}
