import Adapters
import CheckpointFormats
import DiffusionEngine
import ModelCatalog
import TensorCore

/// What a pipeline applies at run time without changing its weights: LoRA / LyCORIS adapters
/// (their products added to the layers' outputs, `--lora FILE[:SCALE]`) and textual-inversion
/// embeddings (tokens added to the tokenizer, rows to the text encoder's embedding table,
/// `--embedding FILE [--token NAME]`).
///
/// ```swift
/// let additions = try RuntimeAdditions.open(loras: ["style.safetensors:0.8"], embeddings: [("cat.pt", "<cat>")])
/// let model = try StableDiffusionModel(path: "v1-5.safetensors", additions: additions)
/// ```
public struct RuntimeAdditions: Sendable {
    public var adapters: [ScaledAdapter]
    public var embeddings: [LoadedEmbedding]

    public init(adapters: [ScaledAdapter] = [], embeddings: [LoadedEmbedding] = []) {
        self.adapters = adapters
        self.embeddings = embeddings
    }

    public var isEmpty: Bool { adapters.isEmpty && embeddings.isEmpty }

    /// Opens `FILE[:SCALE]` adapter arguments and embedding files, each with its token (`nil`:
    /// the file's own token, else its name without the extension).
    ///
    /// - Throws: `AdapterError` for a file that is not the kind of adapter asked for, or a bad
    ///   scale; the reader's errors for a missing or unreadable file.
    public static func open(
        loras: [String] = [], embeddings: [(path: String, token: String?)] = [],
        options: ModelInput.Options = ModelInput.Options()
    ) throws -> RuntimeAdditions {
        RuntimeAdditions(
            adapters: try loras.map { try ScaledAdapter.open($0, options: options) },
            embeddings: try embeddings.map { try LoadedEmbedding.open($0.path, token: $0.token, options: options) })
    }

    /// The engine's table of `adapters` planned against `store` (canonical names): checked
    /// against the base (family, names, shapes) by ``AdapterPlan`` and against the networks
    /// that will run them (`prefixes`: each network's name prefix) by the engine.
    ///
    /// - Throws: `AdapterError` for an adapter refused for this base, or whose target no
    ///   network reads (an embedding table, a normalisation, a tensor outside the networks).
    static func table(
        _ adapters: [ScaledAdapter], store: any TensorStore, family: ArchitectureCatalog.Family?,
        prefixes: [String]
    ) throws -> RuntimeAdapterTable? {
        guard !adapters.isEmpty else { return nil }
        let plan = try AdapterPlan(base: store, baseFamily: family, adapters: adapters)
        var entries: [String: [RuntimeAdapterTable.Entry]] = [:]
        for layer in try plan.runtimeLayers() {
            guard prefixes.contains(where: { layer.target.hasPrefix($0) }) else {
                throw AdapterError(
                    .unmatchedModule,
                    "an adapter changes \(layer.target), which none of the networks the engine runs reads; merge it instead (weightpack merge)",
                    tensor: layer.target)
            }
            let change: RuntimeAdapterTable.Entry.Change
            switch layer.factors {
            case .lowRank(let down, let downShape, let up, let upShape):
                change = .lowRank(down: down, downShape: downShape.dimensions, up: up, upShape: upShape.dimensions)
            case .dense(let values):
                change = .dense(values)
            }
            entries[layer.target, default: []].append(.init(change: change, scale: layer.scale))
        }
        let table = RuntimeAdapterTable(entries)
        do throws(EngineError) {
            try table.validate { store.descriptor(named: $0)?.shape.dimensions }
        } catch {
            throw AdapterError(.shapeMismatch, error.message, tensor: error.tensorName)
        }
        return table
    }

    /// Adds each embedding's tokens to the tokenizer of the text encoder its vectors are for and
    /// its vectors to that encoder's embedding table.
    ///
    /// - Parameter encoders: component → its tokenizer and text model.
    /// - Throws: `AdapterError` for vectors for an encoder the model does not have, a width
    ///   that is not the encoder's, or a token already in the vocabulary.
    static func apply(_ embeddings: [LoadedEmbedding], to encoders: [Component: (CLIPTokenizer, CLIPTextModel)], family: String) throws {
        for e in embeddings {
            for component in e.rows.keys.sorted(by: { $0.rawValue < $1.rawValue }) {
                guard let (tokenizer, model) = encoders[component] else {
                    let has = encoders.keys.map(\.rawValue).sorted().joined(separator: ", ")
                    throw AdapterError(
                        .wrongFamily, "embedding '\(e.token)' has vectors for \(component.rawValue), which \(family) does not have (it has \(has))")
                }
                let width = e.width[component] ?? 0
                guard width == model.configuration.hiddenSize else {
                    throw AdapterError(
                        .wrongFamily,
                        "embedding '\(e.token)' is \(width) wide, the \(family) \(component.rawValue) is \(model.configuration.hiddenSize) wide: it was made for another model"
                    )
                }
                let rows = e.rows[component] ?? []
                guard rows.count == e.tokens.count * width else {
                    throw AdapterError(
                        .malformed,
                        "embedding '\(e.token)' has \(rows.count / max(width, 1)) vectors for \(component.rawValue), \(e.tokens.count) tokens")
                }
                do throws(EngineError) {
                    let ids = try tokenizer.addTokens(e.tokens)
                    try model.addTokenEmbeddings(rows, firstID: ids[0])
                } catch {
                    throw AdapterError(.malformed, "embedding '\(e.token)': \(error.message)")
                }
            }
        }
    }
}
