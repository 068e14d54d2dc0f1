import Adapters
import CheckpointFormats
import Foundation
import ModelCatalog
import TensorCore
import TestSupport

/// A base model under canonical names with its detected family.
struct Base {
    let store: any TensorStore
    let family: ArchitectureCatalog.Family?

    init(_ relative: String) throws {
        let source = try ModelInput.open(fixturePath(relative))
        let layout = ModelLayout.recognize(source.tensors.map(\.name))
        let mapping = try NameMap.canonical(source.tensors, layout: layout)
        store = RemappedStore(base: source, recipes: mapping.recipes)
        family = Detection.detect(store.tensors, layout: layout).family
    }

    static let sd1 = Result { try Base("tiny-sd1/diffusers") }
    static let sdxl = Result { try Base("tiny-sdxl/diffusers") }
}

/// Opens an adapter fixture.
func openAdapter(_ name: String, scale: Double = 1) throws -> ScaledAdapter {
    try ScaledAdapter.open(adapterFixture(name) + ":\(scale)")
}

/// The largest absolute difference over the largest absolute reference value, with the first
/// index where the difference is that large.
func relativeError(_ a: [Float], _ b: [Float]) -> (relative: Double, maxAbs: Double, index: Int) {
    var worst = 0.0, index = 0, scale = 0.0
    for i in 0..<min(a.count, b.count) {
        let d = abs(Double(a[i]) - Double(b[i]))
        if d > worst { worst = d; index = i }
        scale = max(scale, abs(Double(b[i])))
    }
    return (scale > 0 ? worst / scale : worst, worst, index)
}

/// A store of descriptors that throws if any value is read: proves that checks happen on
/// shapes alone, before anything is allocated or read.
final class ShapeOnlyStore: TensorStore, @unchecked Sendable {
    struct Touched: Error {}
    let tensors: [TensorDescriptor]
    let metadata: [String: String]
    var formatName: String { "shapes" }
    init(_ shapes: [(String, [Int])], metadata: [String: String] = [:]) {
        tensors = shapes.map { TensorDescriptor(name: $0.0, dtype: .f32, shape: Shape($0.1), byteCount: 0) }
        self.metadata = metadata
    }
    func tensor(named name: String) throws -> TensorView {
        if name.hasSuffix(".alpha") {
            var one: Float = 1
            let d = TensorDescriptor(name: name, dtype: .f32, shape: Shape([]), byteCount: 4)
            return withUnsafeBytes(of: &one) { TensorView(descriptor: d, bytes: TensorBytes(copying: $0)) }
        }
        throw Touched()
    }
}
