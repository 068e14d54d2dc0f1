import ModelCatalog
import Quantization
import TensorCore

extension CanonicalModel {
    /// How to fetch the ggml blocks the source stores for canonical tensor `name`: `nil` unless
    /// the source is a ``GGMLTensorStore`` (a GGUF or `.wpk` file) and `name` is one of its
    /// tensors copied or reshaped unchanged (a merged or recomputed tensor has no stored blocks).
    /// The closure returns `nil` when that tensor is not stored in a block type.
    public func storedBlocks(of name: String) -> (@Sendable () throws -> GGMLTensorView?)? {
        guard let source = source as? any GGMLTensorStore else { return nil }
        if (store as AnyObject) === (source as AnyObject) {
            guard source.descriptor(named: name) != nil else { return nil }
            return { try source.ggmlTensor(named: name) }
        }
        guard let remapped = store as? RemappedStore, (remapped.base as AnyObject) === (source as AnyObject),
              let recipe = remapped.recipe(named: name), recipe.sources.count == 1,
              recipe.operation == .copy || recipe.operation == .reshape else { return nil }
        let stored = recipe.sources[0]
        return { try source.ggmlTensor(named: stored) }
    }
}
