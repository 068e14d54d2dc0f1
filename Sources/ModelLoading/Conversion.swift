import CheckpointFormats
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore

/// Converts an opened model into a `.wpk` file: canonical names, the detected architecture and
/// source layout recorded, floating-point tensors cast (or quantised to int8) as asked.
///
/// ```swift
/// let model = try CanonicalModel.open("model.safetensors")
/// let result = try Conversion.write(model, to: "model.wpk", options: .init(dtype: .f16))
/// print(result.entries.count, "tensors")
/// ```
public enum Conversion {
    public struct Options: Sendable {
        /// Element type of floating-point tensors (`.int8` quantises weights in blocks).
        public var dtype: DTypeChoice
        /// With `.int8` or a ``ggmlType``: keep tensors matching these patterns unquantised (`*` and `?`).
        public var keepPatterns: [String] = []
        /// Store weights as ggml blocks of this type (one of ``GGMLType/quantizable``; `.wpk` 1.2),
        /// each tensor as ``GGMLTypeRules`` decide (rows of `elementCount / firstDimension`);
        /// `dtype` is then not used. Blocks the source already stores in the decided type are copied.
        public var ggmlType: GGMLType?
        /// With ``ggmlType``: `GLOB=TYPE` overrides, the first match winning (`--tensor-type`).
        public var tensorTypes: [GGMLTypeRules.Override] = []
        /// Store floating-point tensors as zstd-compressed byte planes.
        public var compress = false
        public var compressionLevel: Int32 = 3
        /// Store CLIP `position_ids` as the integers 0..n-1.
        public var fixPositionIDs = false
        /// Record the source file's SHA-256 (reads the input a second time, on another core).
        public var recordSourceDigest = true
        /// Replace an existing output.
        public var overwrite = false
        /// The name and version recorded as `tool`.
        public var tool = "weightpack"
        /// Adapters merged into the model (`MergedStore`'s `plan.provenance`), recorded as `adapters`.
        public var adapters: JSONValue?
        /// A storage per canonical tensor name (`--dtype auto`: ``QualityBudget``), over the plan
        /// a block conversion makes; the tensors it does not name are stored as such a conversion
        /// keeps them (F16 matrices, F32 vectors, other types as they are). `dtype` is then not used.
        public var storage: [String: StorageChoice] = [:]
        /// With ``storage``: the importance of each column of a block tensor's rows, by name
        /// (ggml's weighted searches; unit importance for the others).
        public var importance: [String: [Float]] = [:]
        /// Recorded as `quality_budget` (the recipe of a `--dtype auto` conversion).
        public var recipe: JSONValue?
        /// Header bytes kept free for what ``beforeCommit`` adds.
        public var headerReserve = 0
        /// Called when the file is whole but not yet named (``WPKWriter``): may open it through
        /// the path it is given and return metadata to add; what it throws stops the conversion
        /// (nothing is left under `output`).
        public var beforeCommit: (@Sendable (_ readablePath: String, _ entries: [WPKTensorEntry]) throws -> JSONObject?)?

        public init(dtype: DTypeChoice = .keep) { self.dtype = dtype }
    }

    /// What a conversion did.
    public struct Result: Sendable {
        public var entries: [WPKTensorEntry]
        /// Leftovers (schedule buffers, EMA copies, …) not written.
        public var dropped: [Leftover]
        /// Source names of the `position_ids` tensors repaired.
        public var repairedPositionIDs: [(sourceName: String, count: Int)]
        /// Tensors whose finite values became infinite in f16: name and count.
        public var float16Overflows: [(tensor: String, count: Int)]
        /// `keepPatterns` that match no tensor.
        public var unmatchedKeepPatterns: [String]

        public var storedByteCount: Int { entries.reduce(0) { $0 + $1.length } }
        /// Tensors per stored type, fallbacks and bits per weight.
        public var types: TypeSummary { TypeSummary(wpk: entries) }
        public var logicalByteCount: Int { entries.reduce(0) { $0 + $1.descriptor.byteCount } }
    }

    /// Writes `model` to `output`.
    ///
    /// - Throws: ``ModelLoadingError`` `.noTensors` for an input without tensors; the writer's
    ///   and the source's errors otherwise. Nothing is left under `output` on failure.
    public static func write(
        _ model: CanonicalModel, to output: String, options: Options,
        progress: (any ProgressReporter)? = nil
    ) throws -> Result {
        guard !model.source.tensors.isEmpty else {
            throw ModelLoadingError(.noTensors, "holds no tensors; there is nothing to convert", path: model.path)
        }
        let store = model.store
        let sourceDigest = options.recordSourceDigest ? model.path.flatMap { SourceDigest.start(path: $0) } : nil
        let unmatched = options.keepPatterns.filter { pattern in !store.tensors.contains { Glob.matches(pattern, $0.name) } }
        var plan: [OutputTensor]
        if let target = options.ggmlType {
            guard GGMLType.quantizable.contains(target) else {
                throw QuantizationError(
                    .invalidLayout,
                    "\(target.name) is not a block type WeightPack writes (\(GGMLType.quantizable.map { $0.name.lowercased() }.joined(separator: ", ")))"
                )
            }
            let rules = GGMLTypeRules(target: target, overrides: options.tensorTypes, rows: .allButFirstDimension, keep: options.keepPatterns)
            plan = OutputTensor.plan(from: store, ggmlRules: rules, storedBlocks: { model.storedBlocks(of: $0) })
        } else if options.dtype == .int8 {
            plan = OutputTensor.plan(from: store, rules: QuantizationRules(keep: options.keepPatterns))
        } else if !options.storage.isEmpty {
            let rules = GGMLTypeRules(target: .f16, rows: .allButFirstDimension, keep: options.keepPatterns)
            plan = try OutputTensor.plan(from: store, ggmlRules: rules).map { t in
                guard let choice = options.storage[t.name] else { return t }
                var stored = try Self.stored(t, as: choice)
                if stored.ggml != nil, let importance = options.importance[t.name], importance.count == stored.ggml?.rowLength {
                    stored.importance = importance
                }
                return stored
            }
        } else {
            plan = OutputTensor.plan(from: store, dtype: options.dtype)
            if options.dtype == .keep { plan = try OutputTensor.keepingStoredBlocks(plan, storedBlocks: { model.storedBlocks(of: $0) }) }
        }
        for i in plan.indices {
            if let name = model.sourceName(of: plan[i].name) { plan[i].sourceName = name }
        }
        var repaired: [(String, Int)] = []
        if options.fixPositionIDs {
            let broken = Set(try model.brokenPositionIDs().map(\.tensor))
            for i in plan.indices where broken.contains(plan[i].name) {
                let recipe = TensorRecipe(name: plan[i].name, dtype: .i64, shape: plan[i].shape, sources: [], operation: .positionIDs)
                plan[i] = OutputTensor(
                    name: plan[i].name, dtype: .i64, shape: plan[i].shape, sourceName: plan[i].sourceName, sourceDType: .i64,
                    load: { try recipe.materialize(from: store) })
                repaired.append((plan[i].sourceName, plan[i].shape.count))
            }
        }
        let overflows = Locked<[(String, Int)]>([])
        var metadata = JSONObject()
        metadata["tool"] = .string(options.tool)
        var conversion = JSONObject([
            ("dtype", .string(options.dtype.rawValue)), ("compress", .bool(options.compress)),
            ("weights", .string(model.ema.selected ? "ema" : "main")),
            ("keep_extra", .bool(model.keptExtra)), ("fix_position_ids", .bool(options.fixPositionIDs)),
        ])
        if model.ema.only { conversion["ema_only"] = true }
        if let target = options.ggmlType {
            conversion["dtype"] = .string(target.name.lowercased())
            conversion["ggml"] = [
                "type": .string(target.name),
                "rows": "all-but-first-dimension",
                "tensor_types": .array(options.tensorTypes.map { .string("\($0.pattern)=\($0.type.name.lowercased())") }),
                "keep": .array(options.keepPatterns.map { .string($0) }),
            ]
        }
        if !options.storage.isEmpty {
            conversion["dtype"] = "auto"
            conversion["keep"] = .array(options.keepPatterns.map { .string($0) })
        }
        metadata["conversion"] = .object(conversion)
        if let adapters = options.adapters { metadata["adapters"] = adapters }
        if let recipe = options.recipe { metadata["quality_budget"] = recipe }
        if model.isCanonical, let layout = model.layout {
            metadata["architecture"] = model.detection.json
            metadata["layout"] = layout.json
            if !model.leftovers.isEmpty {
                metadata["leftovers"] = .array(
                    model.leftovers.map { ["name": .string($0.descriptor.name), "kind": .string($0.kind.rawValue), "kept": .bool(model.keptExtra)] })
            }
            var files = JSONObject()
            for file in model.auxiliaryFiles {
                if let text = String(validating: file.bytes, as: UTF8.self) { files[file.path] = .string(text) }
            }
            if files.count > 0 { metadata["diffusers_files"] = .object(files) }
        }
        let dropped = model.keptExtra || !model.isCanonical ? [] : model.leftovers
        metadata["strings"] = .object(JSONObject(store.metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) }))
        let path = model.path
        // The source digest is computed on the other core while tensors convert; the header is
        // written last, so it can still be recorded.
        var writerOptions = WPKWriter.Options(
            compress: options.compress, compressionLevel: options.compressionLevel,
            float16Overflow: { name, count in overflows.withLock { $0.append((name, count)) } })
        writerOptions.headerReserve = options.headerReserve
        let entries = try WPKWriter.write(
            plan, metadata: metadata, to: output, overwrite: options.overwrite, options: writerOptions, progress: progress,
            finalizeMetadata: { meta in
                var source = JSONObject()
                if let path { source["name"] = .string(String(path.split(separator: "/").last ?? Substring(path))) }
                source["format"] = .string(store.formatName)
                if let digest = try sourceDigest?.wait() {
                    source["size"] = JSONValue(digest.size)
                    source["sha256"] = .string(digest.sha256)
                } else if let path, let size = SourceDigest.size(of: path) {
                    source["size"] = JSONValue(size)
                }
                meta["source"] = .object(source)
            },
            beforeCommit: options.beforeCommit)
        return Result(
            entries: entries, dropped: dropped, repairedPositionIDs: repaired,
            float16Overflows: overflows.withLock { $0 }, unmatchedKeepPatterns: unmatched)
    }

    /// `t` (planned as a block conversion keeps it) stored as `choice` instead.
    static func stored(_ t: OutputTensor, as choice: StorageChoice) throws -> OutputTensor {
        var t = t
        t.ggml = nil
        t.blocks = nil
        t.quantization = nil
        switch choice {
        case .int8:
            t.dtype = .i8
            t.quantization = try Int8BlockLayout(shape: t.shape)
        case .ggml(let type) where type.isBlockQuantized:
            t.dtype = .u8
            t.ggml = WPKBlockStorage(type: type, rowLength: GGMLTypeRules(target: type, rows: .allButFirstDimension).rowLength(of: t.shape))
        case .ggml(let type):
            guard let dtype = type.plainDType else {
                throw QuantizationError(.unsupportedDType, "\(type.name) is not a storage WeightPack writes")
            }
            t.dtype = dtype
        }
        return t
    }
}
