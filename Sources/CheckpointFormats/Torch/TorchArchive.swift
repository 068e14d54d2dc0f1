import MappedIO
import TensorCore

/// The zip container of a PyTorch (≥ 1.6) checkpoint, read from a mapped file.
///
/// Names and sizes come from the central directory (ZIP64 understood); every local header's
/// name must equal its central name; the archive prefix is the first entry's top directory
/// and every entry must live under it. Refused: encrypted entries (flag bits 0 and 6),
/// masked central directories (bit 13), multi-disk archives, duplicate names, names with
/// `..`, `.`, empty components, backslashes or a leading `/`, overlapping entries, and any
/// compression method but STORED (torch never compresses; see Docs/torch-checkpoints.md).
/// STORED data is served zero-copy from the mapping.
public final class TorchArchive: Sendable {
    /// One member of the archive.
    public struct Entry: Hashable, Sendable {
        /// The full name, prefix included.
        public var name: String
        /// The name below the prefix (`data.pkl`, `data/0`, …).
        public var relativeName: String
        public var size: Int
        public var crc32: UInt32
        /// Offset of the member's bytes in the file.
        public var dataOffset: Int
        public var dataRange: Range<Int> { dataOffset..<(dataOffset + size) }
    }

    public let file: MappedFile
    /// The top-level directory every entry lives in (`archive`, or the saved file's base name).
    public let prefix: String
    /// Every entry, in central-directory order.
    public let entries: [Entry]
    private let index: [String: Int]

    /// The most entries an archive may have.
    public static let maximumEntries = 1_000_000

    /// Parses the central directory of `file`.
    /// - Throws: `FormatError` `.invalidArchive` for anything malformed or refused.
    /// - Complexity: O(entries); reads only the directory and local headers.
    public init(file: MappedFile) throws(FormatError) {
        self.file = file
        let parsed: (String, [Entry]) = try file.withUnsafeBytes { (raw) throws(FormatError) in
            try TorchArchive.parse(BinaryReader(raw))
        }
        prefix = parsed.0
        entries = parsed.1
        var index: [String: Int] = [:]
        for (i, e) in entries.enumerated() { index[e.relativeName] = i }
        self.index = index
    }

    /// The entry called `relativeName` below the prefix.
    public func entry(named relativeName: String) -> Entry? {
        index[relativeName].map { entries[$0] }
    }

    /// The bytes of an entry, zero-copy from the mapping.
    public func bytes(of entry: Entry) -> TensorBytes {
        // Ranges were checked against the file when the archive was opened.
        file.bytes(in: entry.dataRange)!
    }

    /// Whether an entry's bytes match its CRC-32.
    /// - Complexity: O(entry size).
    public func checksumMatches(_ entry: Entry) -> Bool {
        bytes(of: entry).withUnsafeBytes { CRC32.checksum($0) } == entry.crc32
    }

    private static func fail(_ message: String) -> FormatError {
        FormatError(.invalidArchive, message)
    }

    private static func parse(_ r: BinaryReader) throws(FormatError) -> (String, [Entry]) {
        let size = r.bytes.count
        // End of central directory: the last signature within the final 22 + 65535 bytes.
        guard size >= 22 else { throw fail("zip archive is too short for an end-of-central-directory record") }
        var eocd = -1
        var p = size - 22
        let lowest = max(0, size - 22 - 65_535)
        while p >= lowest {
            if r.getInteger(at: p, as: UInt32.self) == 0x0605_4B50,
                let commentLength = r.getInteger(at: p + 20, as: UInt16.self), p + 22 + Int(commentLength) == size
            {
                eocd = p
                break
            }
            p -= 1
        }
        guard eocd >= 0 else { throw fail("zip archive has no end-of-central-directory record") }
        guard let disk = r.getInteger(at: eocd + 4, as: UInt16.self),
            let cdDisk = r.getInteger(at: eocd + 6, as: UInt16.self),
            let diskEntries = r.getInteger(at: eocd + 8, as: UInt16.self),
            let totalEntries16 = r.getInteger(at: eocd + 10, as: UInt16.self),
            let cdSize32 = r.getInteger(at: eocd + 12, as: UInt32.self),
            let cdOffset32 = r.getInteger(at: eocd + 16, as: UInt32.self)
        else {
            throw fail("zip end-of-central-directory record is truncated")
        }
        var entryCount = UInt64(totalEntries16)
        var cdSize = UInt64(cdSize32)
        var cdOffset = UInt64(cdOffset32)
        var multiDisk = disk != 0 || cdDisk != 0 || diskEntries != totalEntries16
        // ZIP64: a locator just before the classic record points at the ZIP64 record.
        if eocd >= 20, r.getInteger(at: eocd - 20, as: UInt32.self) == 0x0706_4B50 {
            guard let locatorDisk = r.getInteger(at: eocd - 16, as: UInt32.self),
                let z64Offset = r.getInteger(at: eocd - 12, as: UInt64.self),
                let diskCount = r.getInteger(at: eocd - 4, as: UInt32.self),
                z64Offset <= UInt64(eocd - 20), r.getInteger(at: Int(z64Offset), as: UInt32.self) == 0x0606_4B50,
                let z64Disk = r.getInteger(at: Int(z64Offset) + 16, as: UInt32.self),
                let z64CDDisk = r.getInteger(at: Int(z64Offset) + 20, as: UInt32.self),
                let z64DiskEntries = r.getInteger(at: Int(z64Offset) + 24, as: UInt64.self),
                let z64Entries = r.getInteger(at: Int(z64Offset) + 32, as: UInt64.self),
                let z64CDSize = r.getInteger(at: Int(z64Offset) + 40, as: UInt64.self),
                let z64CDOffset = r.getInteger(at: Int(z64Offset) + 48, as: UInt64.self)
            else {
                throw fail("zip has a ZIP64 locator but no valid ZIP64 end-of-central-directory record")
            }
            multiDisk = multiDisk || locatorDisk != 0 || diskCount > 1 || z64Disk != 0 || z64CDDisk != 0 || z64DiskEntries != z64Entries
            entryCount = z64Entries
            cdSize = z64CDSize
            cdOffset = z64CDOffset
        }
        guard !multiDisk else { throw fail("multi-disk zip archives are not supported") }
        guard entryCount > 0 else { throw fail("zip archive has no entries") }
        guard entryCount <= UInt64(maximumEntries) else { throw fail("zip archive declares \(entryCount) entries (at most \(maximumEntries))") }
        guard cdOffset <= UInt64(size), cdSize <= UInt64(size) - cdOffset else {
            throw fail("zip central directory (offset \(cdOffset), \(cdSize) bytes) lies outside the file")
        }
        let cdStart = Int(cdOffset), cdEnd = Int(cdOffset + cdSize)

        var entries: [Entry] = []
        entries.reserveCapacity(Int(entryCount))
        var seen = Set<String>()
        var prefix: String?
        var p2 = cdStart
        for n in 0..<Int(entryCount) {
            guard p2 + 46 <= cdEnd, r.getInteger(at: p2, as: UInt32.self) == 0x0201_4B50,
                let flags = r.getInteger(at: p2 + 8, as: UInt16.self),
                let method = r.getInteger(at: p2 + 10, as: UInt16.self),
                let crc = r.getInteger(at: p2 + 16, as: UInt32.self),
                let compressed32 = r.getInteger(at: p2 + 20, as: UInt32.self),
                let uncompressed32 = r.getInteger(at: p2 + 24, as: UInt32.self),
                let nameLength = r.getInteger(at: p2 + 28, as: UInt16.self),
                let extraLength = r.getInteger(at: p2 + 30, as: UInt16.self),
                let commentLength = r.getInteger(at: p2 + 32, as: UInt16.self),
                let diskStart = r.getInteger(at: p2 + 34, as: UInt16.self),
                let localOffset32 = r.getInteger(at: p2 + 42, as: UInt32.self)
            else {
                throw fail("zip central directory entry \(n) is malformed or truncated")
            }
            let recordLength = 46 + Int(nameLength) + Int(extraLength) + Int(commentLength)
            guard p2 + recordLength <= cdEnd, let nameBytes = r.getBytes(at: p2 + 46, count: Int(nameLength)) else {
                throw fail("zip central directory entry \(n) runs past the directory")
            }
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw fail("zip entry \(n) has a name that is not UTF-8")
            }
            // ZIP64 extra field: the 64-bit values present are those whose 32-bit field is saturated.
            var compressed = UInt64(compressed32), uncompressed = UInt64(uncompressed32), localOffset = UInt64(localOffset32)
            var e = p2 + 46 + Int(nameLength)
            let extraEnd = e + Int(extraLength)
            while e + 4 <= extraEnd {
                let id = r.getInteger(at: e, as: UInt16.self)!
                let len = Int(r.getInteger(at: e + 2, as: UInt16.self)!)
                guard e + 4 + len <= extraEnd else { throw fail("zip entry '\(name)' has a malformed extra field") }
                if id == 0x0001 {
                    var q = e + 4
                    func next() throws(FormatError) -> UInt64 {
                        guard q + 8 <= e + 4 + len, let v = r.getInteger(at: q, as: UInt64.self) else {
                            throw fail("zip entry '\(name)' has a short ZIP64 extra field")
                        }
                        q += 8
                        return v
                    }
                    if uncompressed32 == 0xFFFF_FFFF { uncompressed = try next() }
                    if compressed32 == 0xFFFF_FFFF { compressed = try next() }
                    if localOffset32 == 0xFFFF_FFFF { localOffset = try next() }
                }
                e += 4 + len
            }
            p2 += recordLength

            if flags & 0x0001 != 0 || flags & 0x0040 != 0 {
                throw fail("zip entry '\(name)' is encrypted")
            }
            if flags & 0x2000 != 0 { throw fail("zip entry '\(name)' uses a masked central directory") }
            guard diskStart == 0 else { throw fail("zip entry '\(name)' starts on another disk") }
            if method == 8 {
                throw fail(
                    "zip entry '\(name)' is DEFLATE-compressed; torch writes only STORED entries, and compressed members are refused (re-save with torch.save)"
                )
            }
            guard method == 0 else { throw fail("zip entry '\(name)' uses compression method \(method); only STORED is accepted") }
            guard compressed == uncompressed else {
                throw fail("zip entry '\(name)' is STORED but its compressed and uncompressed sizes differ")
            }
            // Names: one prefix, no traversal.
            try validate(name: name)
            let components = name.split(separator: "/", omittingEmptySubsequences: false)
            guard components.count >= 2 else {
                throw fail(
                    n == 0
                        ? "zip entry '\(name)' is not in a subdirectory (a torch archive keeps everything under one folder)"
                        : "zip entry '\(name)' is outside the archive folder")
            }
            if prefix == nil { prefix = String(components[0]) }
            guard components[0] == prefix! else {
                throw fail("zip entry '\(name)' is outside the archive folder '\(prefix!)'")
            }
            guard seen.insert(name).inserted else { throw fail("zip entry '\(name)' appears twice") }

            // Local header: same name; data follows the local name and extra field.
            guard localOffset <= UInt64(size - 30), r.getInteger(at: Int(localOffset), as: UInt32.self) == 0x0403_4B50,
                let localFlags = r.getInteger(at: Int(localOffset) + 6, as: UInt16.self),
                let localMethod = r.getInteger(at: Int(localOffset) + 8, as: UInt16.self),
                let localNameLength = r.getInteger(at: Int(localOffset) + 26, as: UInt16.self),
                let localExtraLength = r.getInteger(at: Int(localOffset) + 28, as: UInt16.self),
                let localName = r.getBytes(at: Int(localOffset) + 30, count: Int(localNameLength))
            else {
                throw fail("zip entry '\(name)' has no valid local header")
            }
            guard localName.elementsEqual(nameBytes) else {
                throw fail("zip entry '\(name)' has a different name in its local header")
            }
            if localFlags & 0x0041 != 0 { throw fail("zip entry '\(name)' is encrypted") }
            guard localMethod == method else { throw fail("zip entry '\(name)' has a different method in its local header") }
            let dataOffset = Int(localOffset) + 30 + Int(localNameLength) + Int(localExtraLength)
            guard uncompressed <= UInt64(size), dataOffset <= size - Int(uncompressed) else {
                throw fail("zip entry '\(name)' (\(uncompressed) bytes) runs past the end of the file")
            }
            guard dataOffset + Int(uncompressed) <= cdStart else {
                throw fail("zip entry '\(name)' overlaps the central directory")
            }
            entries.append(
                Entry(
                    name: name, relativeName: components.dropFirst().joined(separator: "/"),
                    size: Int(uncompressed), crc32: crc, dataOffset: dataOffset))
        }
        // No two entries may share bytes (overlapping entries are a zip-bomb and scanner-evasion trick).
        let ordered = entries.sorted { $0.dataOffset < $1.dataOffset }
        for (a, b) in zip(ordered, ordered.dropFirst()) where a.dataOffset + a.size > b.dataOffset - 30 {
            throw fail("zip entries '\(a.name)' and '\(b.name)' overlap")
        }
        return (prefix!, entries)
    }

    private static func validate(name: String) throws(FormatError) {
        guard !name.isEmpty, !name.hasPrefix("/"), !name.contains("\\"), !name.utf8.contains(0) else {
            throw fail("zip entry name '\(name)' is not a relative path")
        }
        for component in name.split(separator: "/", omittingEmptySubsequences: false) {
            if component == ".." || component == "." || component.isEmpty {
                throw fail("zip entry name '\(name)' has an empty, '.' or '..' component")
            }
        }
    }
}
