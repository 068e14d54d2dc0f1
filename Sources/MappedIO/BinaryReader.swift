/// A bounds-checked little-endian reader over a byte buffer, in the style of NIO's
/// `ByteBuffer`: `get…(at:)` does not move and returns `nil` when out of range, `read…()`
/// advances and returns `nil` (without moving) when out of range.
public struct BinaryReader {
    public let bytes: UnsafeRawBufferPointer
    /// The offset of the next `read…`.
    public var offset: Int

    public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { max(0, bytes.count - offset) }

    /// Whether `count` bytes at `offset` lie inside the buffer (overflow-checked).
    @inline(__always)
    public func contains(offset: Int, count: Int) -> Bool {
        guard offset >= 0, count >= 0 else { return false }
        let (end, overflow) = offset.addingReportingOverflow(count)
        return !overflow && end <= bytes.count
    }

    public func getInteger<T: FixedWidthInteger>(at offset: Int, as: T.Type = T.self) -> T? {
        guard contains(offset: offset, count: MemoryLayout<T>.size) else { return nil }
        return T(littleEndian: bytes.baseAddress!.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    public func getBytes(at offset: Int, count: Int) -> UnsafeRawBufferPointer? {
        guard contains(offset: offset, count: count) else { return nil }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    public mutating func readInteger<T: FixedWidthInteger>(as: T.Type = T.self) -> T? {
        guard let value = getInteger(at: offset, as: T.self) else { return nil }
        offset += MemoryLayout<T>.size
        return value
    }

    public mutating func readBytes(count: Int) -> UnsafeRawBufferPointer? {
        guard let value = getBytes(at: offset, count: count) else { return nil }
        offset += count
        return value
    }

    /// Moves the offset by `count`; `false` (and no move) when that leaves the buffer.
    public mutating func skip(_ count: Int) -> Bool {
        guard contains(offset: offset, count: count) else { return false }
        offset += count
        return true
    }
}
