/// The dimensions of a tensor, outermost first (row-major, as safetensors and PyTorch store them).
public struct Shape: Hashable, Sendable, CustomStringConvertible, ExpressibleByArrayLiteral {
    /// The most dimensions a shape may have.
    public static let maximumRank = 64

    public let dimensions: [Int]

    /// Creates a shape, refusing negative dimensions and more than ``maximumRank`` of them.
    public init(validating dimensions: [Int]) throws(TensorCoreError) {
        guard dimensions.count <= Shape.maximumRank else {
            throw TensorCoreError(.tooManyDimensions, "shape has \(dimensions.count) dimensions (at most \(Shape.maximumRank))")
        }
        for d in dimensions where d < 0 {
            throw TensorCoreError(.negativeDimension, "shape \(dimensions) has a negative dimension")
        }
        self.dimensions = dimensions
    }

    /// Creates a shape from dimensions known to be valid (our own code, not a file).
    public init(_ dimensions: [Int]) {
        precondition(dimensions.allSatisfy { $0 >= 0 }, "negative dimension in \(dimensions)")
        self.dimensions = dimensions
    }

    public init(arrayLiteral elements: Int...) { self.init(elements) }

    public var rank: Int { dimensions.count }

    public subscript(index: Int) -> Int { dimensions[index] }

    /// The number of elements, with overflow checking.
    ///
    /// A 0-rank shape holds one element; any zero dimension makes the count zero.
    public func elementCount() throws(TensorCoreError) -> Int {
        var count = 1
        for d in dimensions {
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow else {
                throw TensorCoreError(.overflow, "element count of shape \(dimensions) overflows")
            }
            count = product
        }
        return count
    }

    /// The number of bytes the tensor occupies in `dtype`, with overflow checking.
    ///
    /// - Throws: ``TensorCoreError/Code/overflow`` when the size does not fit, and
    ///   ``TensorCoreError/Code/misalignedSubByte`` when a sub-byte dtype leaves a partial byte.
    public func byteCount(of dtype: DType) throws(TensorCoreError) -> Int {
        let count = try elementCount()
        let (bits, overflow) = count.multipliedReportingOverflow(by: dtype.bitWidth)
        guard !overflow else {
            throw TensorCoreError(.overflow, "byte count of shape \(dimensions) in \(dtype.name) overflows")
        }
        guard bits % 8 == 0 else {
            throw TensorCoreError(.misalignedSubByte, "shape \(dimensions) in \(dtype.name) does not fill whole bytes")
        }
        return bits / 8
    }

    /// The element count for shapes known to be valid (our own code).
    public var count: Int { dimensions.reduce(1, *) }

    public var description: String { "[" + dimensions.map(String.init).joined(separator: ", ") + "]" }
}
