import TensorCore

/// Rewrites the checksums a reader checks before it parses any further, so that the fuzzer's
/// mutations of checksummed bytes reach the code behind the check. The fuzz targets run each
/// input as it is and, when it differs, repaired; regression fixtures hold the bytes the
/// reader actually saw.
public enum ChecksumRepair {
    /// A `.wpk` file with the preamble's header checksum (XXH64 of the header bytes) made to
    /// match, or `nil` when the bytes are too short or the declared header runs past the end.
    public static func wpk(_ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        guard bytes.count >= 64 else { return nil }
        let length = littleEndian(bytes, at: 24, width: 8)
        guard length <= UInt64(bytes.count - 64) else { return nil }
        let header = UnsafeRawBufferPointer(rebasing: bytes[64..<(64 + Int(length))])
        var copy = Array(bytes)
        store(XXHash64.hash(header), into: &copy, at: 48, width: 8)
        return copy
    }

    /// A zip archive with every CRC-32 (central directory and local header) recomputed over
    /// the entry's stored bytes, or `nil` when there is no end-of-central-directory record.
    /// Walks only classic (non-ZIP64) directories, and stops at the first malformed record.
    public static func zip(_ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        let size = bytes.count
        guard size >= 22 else { return nil }
        var eocd = -1
        var p = size - 22
        while p >= max(0, size - 22 - 65_535) {
            if littleEndian(bytes, at: p, width: 4) == 0x0605_4B50 { eocd = p; break }
            p -= 1
        }
        guard eocd >= 0 else { return nil }
        let count = Int(littleEndian(bytes, at: eocd + 10, width: 2))
        let directorySize = Int(littleEndian(bytes, at: eocd + 12, width: 4))
        let directoryStart = Int(littleEndian(bytes, at: eocd + 16, width: 4))
        guard directoryStart <= size, directorySize <= size - directoryStart else { return nil }
        var copy = Array(bytes)
        var q = directoryStart
        for _ in 0..<count {
            guard q + 46 <= size, littleEndian(bytes, at: q, width: 4) == 0x0201_4B50 else { break }
            let stored = littleEndian(bytes, at: q + 20, width: 4)
            let record =
                46 + Int(littleEndian(bytes, at: q + 28, width: 2)) + Int(littleEndian(bytes, at: q + 30, width: 2))
                + Int(littleEndian(bytes, at: q + 32, width: 2))
            let local = Int(littleEndian(bytes, at: q + 42, width: 4))
            if local + 30 <= size, littleEndian(bytes, at: local, width: 4) == 0x0403_4B50 {
                let start = local + 30 + Int(littleEndian(bytes, at: local + 26, width: 2)) + Int(littleEndian(bytes, at: local + 28, width: 2))
                if stored <= UInt64(size), start <= size - Int(stored) {
                    let crc = UInt64(crc32(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + Int(stored))])))
                    store(crc, into: &copy, at: q + 16, width: 4)
                    store(crc, into: &copy, at: local + 14, width: 4)
                }
            }
            q += record
        }
        return copy
    }

    /// CRC-32 as zip stores it (IEEE 802.3, reflected polynomial 0xEDB88320), bit by bit:
    /// inputs are small and this keeps the harness independent of the reader's own table.
    static func crc32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    static func littleEndian(_ bytes: UnsafeRawBufferPointer, at offset: Int, width: Int) -> UInt64 {
        guard offset >= 0, offset <= bytes.count - width else { return 0 }
        var value: UInt64 = 0
        for i in stride(from: offset + width - 1, through: offset, by: -1) { value = value << 8 | UInt64(bytes[i]) }
        return value
    }

    static func store(_ value: UInt64, into bytes: inout [UInt8], at offset: Int, width: Int) {
        for i in 0..<width { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where to write each repaired input (`WEIGHTPACK_FUZZ_SAVE_REPAIRED`), so that a crash found
/// through a repair can be kept as a fixture holding the bytes the reader actually saw.
private let repairedInputPath: String? = getenv("WEIGHTPACK_FUZZ_SAVE_REPAIRED").map { String(cString: $0) }

extension ChecksumRepair {
    /// Writes `bytes` to `$WEIGHTPACK_FUZZ_SAVE_REPAIRED` when it is set (replaying one input).
    public static func saveIfAsked(_ bytes: [UInt8]) {
        guard let path = repairedInputPath else { return }
        let file = ScratchFile(path: path)
        bytes.withUnsafeBytes { file.write($0) }
    }
}
