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
    /// The globals not on the allow-list (dangerous ones first) that were present and allowed
    /// (`allowUnsafeGlobals`); empty otherwise.
    public let allowedUnsafeGlobals: [PickleScanReport.Finding]

    /// The default bound on the bytes a checkpoint's tensors may materialise per byte of
    /// storage the file holds (`maximumExpansion`).
    public static let defaultMaximumExpansion = 16
    /// Bytes any checkpoint may materialise whatever the ratio, so small legitimate expanded
    /// buffers in tiny files are never refused: 64 MiB.
    public static let expansionAllowance = 64 << 20
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
    ///   - maximumExpansion: refuse a checkpoint whose tensors, materialised, would take more
    ///     than this many times the storage bytes they view (stride-0 or overlapping views make
    ///     a few stored bytes into gigabytes); at least 1. Up to `expansionAllowance` bytes are
    ///     always allowed.
    /// - Throws: `FormatError`: `.unsafeGlobal` (naming the global: anything not on the
    ///   allow-list, dangerous or unknown), `.invalidArchive`,
    ///   `.invalidPickle`, `.unsupportedTensor`, `.unsupportedDType`, `.storageOutOfRange`,
    ///   `.duplicateTensor`, `.checksumMismatch`, `.io`.
    /// - Complexity: O(pickle size + number of zip entries); no tensor data is read.
    public init(
        path: String, allowUnsafeGlobals: Bool = false, limits: PickleLimits = .default,
        maximumExpansion: Int = TorchCheckpoint.defaultMaximumExpansion
    ) throws(FormatError) {
        self.path = path
        do throws(FormatError) {
            let file: MappedFile
            do { file = try MappedFile(path: path) } catch { throw FormatError(error) }
            self.file = file
            let kind = try TorchCheckpoint.kind(of: file)
            if kind == .zip, try TorchCheckpoint.isTorchScript(TorchArchive(file: file)) {
                throw TorchCheckpoint.torchScriptError
            }
            if kind == .tar {
                throw FormatError(
                    .invalidArchive, "tar-format PyTorch checkpoints (PyTorch 0.1.x) are not supported; re-save with a current torch.save")
            }
            let report = try TorchCheckpoint.scan(file: file, kind: kind, limits: limits)
            // The allow-list is the gate: anything not on it is refused, dangerous or not.
            let refused = report.refused
            if let bad = refused.first, !allowUnsafeGlobals {
                throw TorchCheckpoint.unsafe(bad, count: refused.count)
            }
            allowedUnsafeGlobals = refused
            let loaded: Loaded
            switch kind {
            case .zip:
                formatName = "ckpt"
                loaded = try TorchCheckpoint.loadZip(file: file, limits: limits, allowUnsafeGlobals: allowUnsafeGlobals)
            case .pickle, .tar:
                throw FormatError(.invalidArchive, "a pickle that is not a PyTorch checkpoint (no legacy magic number)")
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
            try TorchCheckpoint.checkExpansion(loaded.tensors, maximumExpansion: maximumExpansion)
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

    enum Kind { case zip, legacy, pickle, tar }

    struct Loaded {
        var tensors: [TorchTensorRecipe]
        var metadata: [String: String]
        var bigEndian: Bool
    }

    static func unsafe(_ finding: PickleScanReport.Finding, count: Int) -> FormatError {
        let what: String
        if !finding.isResolved {
            what = "an unresolvable \(finding.opcode) (\(finding.reason ?? "operands hidden from static analysis"))"
        } else {
            let written = finding.written != finding.qualifiedName ? ", written \(finding.written)" : ""
            what =
                finding.safety == .dangerous
                ? "the dangerous global \(finding.qualifiedName)\(written)"
                : "the global \(finding.qualifiedName)\(written), which is not on the allow-list"
        }
        let more = count > 1 ? " and \(count - 1) more" : ""
        let place = finding.isResolved || finding.offset > 0 ? "\(finding.opcode) at byte \(finding.offset) of \(finding.entry)" : finding.entry
        return FormatError(
            .unsafeGlobal,
            "refusing a pickle that names \(what) (\(place))\(more); nothing was executed (--allow-unsafe-globals reads its tensors anyway, still executing nothing)"
        )
    }

    /// Refuses tensors that would materialise more than `maximumExpansion` times the storage
    /// bytes they view (beyond `expansionAllowance`), before any tensor is read.
    static func checkExpansion(_ tensors: [TorchTensorRecipe], maximumExpansion: Int) throws(FormatError) {
        var materialized = 0
        for t in tensors {
            let (sum, overflow) = materialized.addingReportingOverflow(t.descriptor.byteCount)
            guard !overflow else {
                throw FormatError(.validationOverflow, "the tensors' sizes add up past 2^63 bytes")
            }
            materialized = sum
        }
        // Stored bytes: the union of the storage ranges the tensors view.
        var stored = 0
        var end = Int.min
        for range in Set(tensors.map(\.storageRange)).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            let start = max(range.lowerBound, end)
            if range.upperBound > start { stored += range.upperBound - start }
            end = max(end, range.upperBound)
        }
        let ratio = max(1, maximumExpansion)
        let (product, overflow) = stored.multipliedReportingOverflow(by: ratio)
        let allowed = max(overflow ? Int.max : product, expansionAllowance)
        guard materialized <= allowed else {
            throw FormatError(
                .unsupportedTensor,
                "the tensors would take \(materialized) bytes but view only \(stored) stored bytes (stride-0 or overlapping views); at most \(ratio)× (or \(expansionAllowance >> 20) MiB) is allowed, and a larger bound must be asked for"
            )
        }
    }

    /// What the file is, from its first bytes.
    ///
    /// As `torch.load` decides: a zip by its first four bytes (`_is_zipfile`); then a tar
    /// archive if `tarfile.open` accepts the first header; anything else is unpickled from
    /// byte 0 (`_legacy_load`), so any file whose first byte is a pickle opcode is a pickle
    /// (`legacy` when it starts with `PROTO`, the legacy format's first byte).
    static func kind(of file: MappedFile) throws(FormatError) -> Kind {
        try file.withUnsafeBytes { (raw) throws(FormatError) -> Kind in
            if raw.count >= 4, raw[0] == 0x50, raw[1] == 0x4B, raw[2] == 0x03, raw[3] == 0x04 { return .zip }
            if isTarHeader(raw) { return .tar }
            if raw.count >= 8, Array(raw[0..<8]) == Array("PYTORCH1".utf8) {
                throw FormatError(.invalidArchive, "this is the PyTorch 1.0 preview archive format, which torch itself no longer reads")
            }
            if let first = raw.first, startsLikePickle(first) { return first == 0x80 ? .legacy : .pickle }
            throw FormatError(.invalidArchive, "not a PyTorch checkpoint: neither a zip archive nor a pickle")
        }
    }

    /// Whether `byte` is a pickle opcode: a file starting with one is unpickled by `torch.load`.
    public static func startsLikePickle(_ byte: UInt8) -> Bool {
        PickleOpcode(rawValue: byte) != nil
    }

    static func pickleError(_ error: PickleError, entry: String) -> FormatError {
        FormatError(.invalidPickle, "\(entry): \(error.message) (at byte \(error.offset))", underlying: error)
    }

    /// Checks the globals the machine actually built against the classifier (the static scan
    /// already did; this covers any operand the scan could not see the same way).
    static func checkBuiltGlobals(_ document: PickleDocument, entry: String, allowUnsafeGlobals: Bool) throws(FormatError) {
        guard !allowUnsafeGlobals else { return }
        for g in document.globals where g.safety != .safe {
            throw unsafe(PickleScanReport.Finding(g, entry: entry), count: 1)
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
