import Foundation
import StrictJSON
import TensorCore

// What the test targets share: where the repository and its fixtures are, scratch folders, an
// in-memory tensor store, byte and value comparisons, and parsing the JSON the binary prints.

/// The repository's root folder (this file is `Tests/TestSupport/TestSupport.swift`).
public let repositoryURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// The repository's `Fixtures/` folder.
public let fixturesURL = repositoryURL.appendingPathComponent("Fixtures")

/// The path of `Fixtures/<relative>`.
public func fixturePath(_ relative: String) -> String { fixturesURL.appendingPathComponent(relative).path }

/// The path of `Fixtures/adapters/<name>`.
public func adapterFixture(_ name: String) -> String { fixturePath("adapters/" + name) }

/// A fresh, empty temporary folder; the caller removes it (`defer`).
public func makeTemporaryFolder(prefix: String = "weightpack-tests") throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A failed expectation of the shared helpers, with what was found.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Parses a JSON document the binary printed; it must be an object.
public func parseJSON(_ text: String) throws -> JSONObject {
    guard let object = try JSONParser.parse(text).objectValue else {
        throw TestSupportError("expected a JSON object, got: \(text.prefix(200))")
    }
    return object
}

/// Whether two views hold the same dtype, shape and bytes.
public func sameBytes(_ a: TensorView, _ b: TensorView) -> Bool {
    a.dtype == b.dtype && a.shape == b.shape && a.bytes.withUnsafeBytes { x in b.bytes.withUnsafeBytes { y in x.elementsEqual(y) } }
}

/// Signal-to-noise ratio of `b` against the reference `a` in dB (`.infinity` when equal).
public func snr(_ a: [Float], _ b: [Float]) -> Double {
    var signal = 0.0
    var noise = 0.0
    for (x, y) in zip(a, b) {
        signal += Double(x) * Double(x)
        noise += (Double(x) - Double(y)) * (Double(x) - Double(y))
    }
    return noise == 0 ? .infinity : 10 * log10(signal / noise)
}

/// The largest absolute difference over the largest absolute golden value.
public func relativeDifference(_ a: [Float], _ golden: [Float]) -> Double {
    var worst = 0.0
    var scale = 0.0
    for (x, y) in zip(a, golden) {
        worst = max(worst, abs(Double(x) - Double(y)))
        scale = max(scale, abs(Double(y)))
    }
    return scale > 0 ? worst / scale : worst
}

/// A tensor store held in memory: built from raw bytes (writer tests) or from `Float` values
/// stored as F32, F16 or BF16 (kernel and layer tests).
public final class MemoryStore: TensorStore, @unchecked Sendable {
    public var formatName: String { "memory" }
    public private(set) var tensors: [TensorDescriptor] = []
    public let metadata: [String: String]
    private var data: [String: TensorBytes] = [:]

    /// A store of `(name, dtype, shape, bytes)` items.
    public init(_ items: [(String, DType, [Int], [UInt8])] = [], metadata: [String: String] = [:]) {
        self.metadata = metadata
        for (name, dtype, shape, bytes) in items {
            tensors.append(TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: bytes.count))
            data[name] = bytes.withUnsafeBytes { TensorBytes(copying: $0) }
        }
    }

    /// Adds `values` as `name`, stored as `dtype` (F32, F16 or BF16).
    public func add(_ name: String, shape: [Int], values: [Float], dtype: DType = .f32) {
        precondition(shape.reduce(1, *) == values.count)
        let width = dtype.byteWidth!
        let buffer = OwnedBuffer(byteCount: values.count * width)
        values.withUnsafeBytes { src in
            try! ElementConversion.convert(src, from: .f32, into: buffer.mutableBytes, to: dtype, count: values.count)
        }
        tensors.append(TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: values.count * width))
        data[name] = TensorBytes(owner: buffer, buffer: buffer.bytes)
    }

    public func tensor(named name: String) throws -> TensorView {
        guard let bytes = data[name], let d = tensors.first(where: { $0.name == name }) else {
            throw TestSupportError("no tensor named \(name) in the memory store")
        }
        return TensorView(descriptor: d, bytes: bytes)
    }
}
