import CheckpointFormats
import Foundation
import ModelCatalog
import TensorCore

/// The bytes of a tensor.
func bytes(_ view: TensorView) -> [UInt8] { view.bytes.withUnsafeBytes { Array($0) } }

/// The first difference between two tensors (name, dtype, shape, bytes), or `nil` when equal.
func difference(_ a: TensorView, _ b: TensorView) -> String? {
    if a.dtype != b.dtype { return "\(a.name): dtype \(a.dtype.name) vs \(b.dtype.name)" }
    if a.shape != b.shape { return "\(a.name): shape \(a.shape) vs \(b.shape)" }
    let x = bytes(a), y = bytes(b)
    if let i = zip(x, y).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset { return "\(a.name): first different byte at \(i)" }
    return nil
}

/// A store of descriptors only (for detection tests on shapes).
final class ShapeStore: TensorStore, @unchecked Sendable {
    let tensors: [TensorDescriptor]
    var formatName: String { "shapes" }
    var metadata: [String: String] { [:] }
    init(_ shapes: [(String, Shape)], dtype: DType = .f16) {
        tensors = shapes.map { TensorDescriptor(name: $0.0, dtype: dtype, shape: $0.1, byteCount: (try? $0.1.byteCount(of: dtype)) ?? 0) }
    }
    func tensor(named name: String) throws -> TensorView { throw CatalogError(.missingTensor, "shapes only") }
}

/// Opens `path` and maps it to canonical names.
func canonical(_ path: String, weights: WeightSelection = .main, keepExtra: Bool = false) throws -> (any TensorStore, CanonicalMapping, RemappedStore)
{
    let store = try ModelInput.open(path)
    let layout = ModelLayout.recognize(store.tensors.map(\.name))
    let mapping = try NameMap.canonical(store.tensors, layout: layout, weights: weights, keepExtra: keepExtra)
    return (store, mapping, RemappedStore(base: store, recipes: mapping.recipes))
}
