import ModelCatalog
import Quantization
import TensorCore

extension CanonicalModel {
    /// How to fetch the ggml blocks the source stores for canonical tensor `name`: `nil` unless
    /// the canonical store hands blocks through (a GGUF or `.wpk` file, directly or through the
    /// name map: copies, reshapes and row slices; a merged or recomputed tensor has none) and
    /// has `name`. The closure returns `nil` when that tensor is not stored in a block type.
    public func storedBlocks(of name: String) -> (@Sendable () throws -> GGMLTensorView?)? {
        guard let blocks = store as? any GGMLTensorStore, blocks.descriptor(named: name) != nil else { return nil }
        return { try blocks.ggmlTensor(named: name) }
    }
}
