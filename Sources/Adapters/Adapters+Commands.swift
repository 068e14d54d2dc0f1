import CheckpointFormats
import ModelCatalog
import TensorCore

// One call per command-line use (the commands stay thin; see Docs/adapters.md).

extension AdapterReport {
    /// The report of `store` when it is an adapter (a network or an embedding), `nil` when it
    /// is not one (for `inspect`, which tries this when no model layout is recognised).
    ///
    /// Any file of one tensor reads as a diffusers embedding; `inspect` calls it one only when
    /// its key is a `<token>` (what diffusers' training script saves) or its width is a published
    /// text encoder's, so a plain one-tensor file is not shown as an adapter.
    ///
    /// - Throws: `AdapterError` when the file is an adapter with a bad module.
    public static func inspect(_ store: any TensorStore) throws(AdapterError) -> AdapterReport? {
        // One tensor under a name that is neither a `<token>` nor A1111's: nothing says it is an
        // embedding, so a refusal of it as one (too many rows) is no finding either.
        let plainOneTensor =
            store.tensors.count == 1
            && store.tensors.allSatisfy { d in
                !(d.name.hasPrefix("<") && d.name.hasSuffix(">")) && d.name != "emb_params" && !d.name.hasPrefix("string_to_param.")
            }
        let adapter: Adapter
        do {
            adapter = try Adapter(store: store)
        } catch  where error.code == .notAnAdapter || plainOneTensor {
            return nil
        }
        if let e = adapter.embedding, e.dialect == .diffusers,
            !e.vectors.allSatisfy({ $0.textModel != nil || $0.tensor.hasPrefix("<") && $0.tensor.hasSuffix(">") })
        {
            return nil
        }
        return AdapterReport(adapter)
    }
}

extension MergedStore {
    /// `merge BASE ADAPTER[:SCALE]…`: opens every adapter argument, plans it against `base`
    /// (canonical names) and gives the merged store.
    ///
    /// - Parameters:
    ///   - baseFamily: the base's detected family (adapters for another are refused).
    ///   - mergedDType: `.f32` when the output is quantised afterwards, `nil` to keep the base's dtypes.
    public static func merging(
        _ arguments: [String], into base: any TensorStore, baseFamily: ArchitectureCatalog.Family?, mergedDType: DType? = nil,
        options: ModelInput.Options = ModelInput.Options()
    ) throws -> MergedStore {
        let adapters = try arguments.map { try ScaledAdapter.open($0, options: options) }
        return MergedStore(plan: try AdapterPlan(base: base, baseFamily: baseFamily, adapters: adapters), mergedDType: mergedDType)
    }
}

extension AdapterPlan {
    /// `--lora FILE[:SCALE]` (repeatable): the run-time factors of every argument against `base`.
    public static func runtimeLayers(
        _ arguments: [String], for base: any TensorStore, baseFamily: ArchitectureCatalog.Family?,
        options: ModelInput.Options = ModelInput.Options()
    ) throws -> [RuntimeLayerAdapter] {
        let adapters = try arguments.map { try ScaledAdapter.open($0, options: options) }
        return try AdapterPlan(base: base, baseFamily: baseFamily, adapters: adapters).runtimeLayers()
    }
}

extension AdapterConversion {
    /// `export ADAPTER --layout kohya|diffusers`: the converted store, ready for
    /// `OutputTensor.plan(from:dtype: .keep)` and a writer (with `store.metadata`).
    public static func convert(_ store: any TensorStore, to target: Target, family: ArchitectureCatalog.Family? = nil) throws -> ConvertedAdapterStore
    {
        try convert(try Adapter(store: store), to: target, family: family)
    }
}

/// An embedding ready for a tokenizer and a text encoder: the tokens to add and, per text
/// encoder, one row of the token-embedding table per token.
public struct LoadedEmbedding: Sendable {
    /// The prompt word (`<name>`) that expands to `tokens`.
    public var token: String
    /// `token`, `token_1`, … one per vector, as diffusers' `load_textual_inversion` adds them.
    public var tokens: [String]
    /// Text encoder → `tokens.count × width` values.
    public var rows: [Component: [Float]]
    public var width: [Component: Int]

    /// `--embedding FILE [--token NAME]`: the token is `NAME`, else the file's own (a diffusers
    /// key, A1111's `name`), else the file name without its extension.
    public static func open(_ path: String, token: String? = nil, options: ModelInput.Options = ModelInput.Options()) throws -> LoadedEmbedding {
        let store = try ModelInput.open(path, options: options)
        let adapter = try Adapter(store: store)
        guard let e = adapter.embedding else {
            throw AdapterError(
                .malformed,
                "'\(path)' is a \(AdapterReport(adapter).kinds.map(\.kind).joined(separator: "+")), not a textual-inversion embedding (use --lora)")
        }
        let file = path.split(separator: "/").last.map(String.init) ?? path
        let stem = file.split(separator: ".").first.map(String.init) ?? file
        let name = token ?? e.suggestedToken ?? stem
        var rows: [Component: [Float]] = [:], width: [Component: Int] = [:]
        for v in e.vectors {
            rows[v.component] = try e.values(for: v.component, from: store)
            width[v.component] = v.width
        }
        return LoadedEmbedding(token: name, tokens: e.tokens(named: name), rows: rows, width: width)
    }
}
