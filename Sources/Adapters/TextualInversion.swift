import ModelCatalog
import TensorCore

/// A textual-inversion embedding: learned token vectors for one or two text encoders.
public struct TextualInversion: Sendable, Hashable {
    /// How the file stores its vectors.
    public enum Dialect: String, Sendable, Hashable {
        /// A1111: `string_to_param.*` in a pickled `.pt`, `emb_params` in a `.safetensors`.
        case a1111 = "a1111"
        /// diffusers: one tensor under any key (often the token itself).
        case diffusers
        /// SDXL: `clip_l` and `clip_g`, one per text encoder.
        case sdxlPair = "sdxl-pair"
    }

    /// The vectors for one text encoder.
    public struct Vectors: Sendable, Hashable {
        /// The tensor in the file.
        public var tensor: String
        /// Number of vectors (tokens the embedding expands to).
        public var count: Int
        /// Width of each vector.
        public var width: Int
        /// The text encoder they belong to.
        public var component: Component
        /// The catalog's text tower of that width (`clip-l`, `openclip-h`, `openclip-bigg`), if any.
        public var textModel: String?
    }

    public var dialect: Dialect
    public var vectors: [Vectors]
    /// The token the file suggests (a diffusers key such as `<cat-toy>`, A1111's `name`).
    public var suggestedToken: String?
    /// The family the widths point to (`sd1`, `sd2`, `sdxl`), `nil` for widths of no published model.
    public var familyID: String?

    /// More vectors than a 77-token prompt could hold is not an embedding we accept.
    public static let maximumVectors = 75
    public static let maximumWidth = 16_384

    /// Reads an embedding from `tensors`; `nil` when they are not one.
    init?(_ tensors: [TensorDescriptor], metadata: [String: String], catalog: ArchitectureCatalog = .standard) throws(AdapterError) {
        func rows(_ d: TensorDescriptor) throws(AdapterError) -> (Int, Int)? {
            guard d.dtype.isConvertibleFloat else { return nil }
            let s = d.shape
            let (n, w): (Int, Int)
            switch s.rank {
            case 1: (n, w) = (1, s[0])
            case 2: (n, w) = (s[0], s[1])
            case 3 where s[0] == 1: (n, w) = (s[1], s[2])
            default: return nil
            }
            guard n >= 1, n <= Self.maximumVectors, w >= 1, w <= Self.maximumWidth else {
                throw AdapterError(
                    .tooLarge,
                    "embedding '\(d.name)' is \(s): \(n) vectors of width \(w); at most \(Self.maximumVectors) vectors of width up to \(Self.maximumWidth) are accepted",
                    tensor: d.name)
            }
            return (n, w)
        }
        func model(_ width: Int, _ component: Component) -> String? {
            let preferred: [String] = component == .textEncoder2 ? ["openclip-bigg"] : ["clip-l", "openclip-h"]
            return preferred.first { catalog.textModels[$0]?.hidden == width }
        }
        let byName = Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        if let l = byName["clip_l"], let g = byName["clip_g"] {
            guard let (nl, wl) = try rows(l), let (ng, wg) = try rows(g) else {
                throw AdapterError(.malformed, "clip_l \(l.shape) and clip_g \(g.shape) must be [vectors, width] floating-point tensors")
            }
            guard nl == ng else {
                throw AdapterError(.malformed, "clip_l has \(nl) vectors and clip_g \(ng); an SDXL embedding has as many for both encoders")
            }
            dialect = .sdxlPair
            vectors = [
                Vectors(tensor: "clip_l", count: nl, width: wl, component: .textEncoder, textModel: model(wl, .textEncoder)),
                Vectors(tensor: "clip_g", count: ng, width: wg, component: .textEncoder2, textModel: model(wg, .textEncoder2)),
            ]
            suggestedToken = nil
            familyID = "sdxl"
            return
        }
        let floats = tensors.filter { $0.dtype.isConvertibleFloat }
        let a1111 = floats.filter { $0.name.hasPrefix("string_to_param.") || $0.name == "emb_params" }
        let chosen: TensorDescriptor
        if a1111.count == 1 {
            dialect = .a1111
            chosen = a1111[0]
            suggestedToken = metadata["name"].map { String($0.filter { $0 != "'" && $0 != "\"" }) }
        } else if floats.count == 1, tensors.count == 1 {
            dialect = .diffusers
            chosen = floats[0]
            suggestedToken = chosen.name
        } else {
            return nil
        }
        guard let (n, w) = try rows(chosen) else { return nil }
        let m = model(w, .textEncoder)
        vectors = [Vectors(tensor: chosen.name, count: n, width: w, component: .textEncoder, textModel: m)]
        familyID = m == "clip-l" ? "sd1" : m == "openclip-h" ? "sd2" : nil
    }

    /// The vectors for `component` as f32, row after row (`count × width` values).
    public func values(for component: Component, from store: any TensorStore) throws -> [Float] {
        guard let v = vectors.first(where: { $0.component == component }) else {
            throw AdapterError(.malformed, "the embedding has no vectors for \(component.rawValue)")
        }
        let floats = try store.tensor(named: v.tensor).floats()
        guard floats.count == v.count * v.width else {
            throw AdapterError(.malformed, "embedding '\(v.tensor)' changed while reading", tensor: v.tensor)
        }
        guard floats.allSatisfy(\.isFinite) else {
            throw AdapterError(.malformed, "embedding '\(v.tensor)' holds NaN or infinite values", tensor: v.tensor)
        }
        return floats
    }

    /// The tokens diffusers' `load_textual_inversion` adds for `token`: `token`, `token_1`, … one per vector.
    public func tokens(named token: String) -> [String] {
        let n = vectors.map(\.count).max() ?? 1
        return (0..<n).map { $0 == 0 ? token : "\(token)_\($0)" }
    }
}
