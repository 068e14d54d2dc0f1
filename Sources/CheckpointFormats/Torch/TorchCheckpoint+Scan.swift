import MappedIO
import SafePickle

extension TorchCheckpoint {
    /// Lists every global named by every pickle in a file, without running any of them.
    ///
    /// Zip archives: `data.pkl`, every member ending in `.pkl`, and every other member whose
    /// first bytes look like a pickle (`0x80` then a protocol 0–5), except the raw storage
    /// records `data/<n>`; concatenated pickles inside a member are walked too. Legacy files:
    /// the five stacked pickles. Any other file starting with a pickle: every concatenated
    /// pickle up to the end or the first error. Walks that stop early are listed in `problems`.
    ///
    /// - Throws: `FormatError` `.invalidArchive` for archives we cannot read at all (bad zip,
    ///   DEFLATE or encrypted entries, tar files), `.io`.
    public static func scan(path: String, limits: PickleLimits = .default) throws(FormatError) -> PickleScanReport {
        do throws(FormatError) {
            let file: MappedFile
            do { file = try MappedFile(path: path) } catch { throw FormatError(error) }
            return try scan(file: file, kind: try kind(of: file), limits: limits)
        } catch {
            throw error.inFile(path)
        }
    }

    static func scan(file: MappedFile, kind: Kind, limits: PickleLimits) throws(FormatError) -> PickleScanReport {
        switch kind {
        case .zip:
            var report = PickleScanReport(format: "ckpt")
            let archive = try TorchArchive(file: file)
            for entry in archive.entries where looksLikePickle(entry, in: archive) {
                archive.bytes(of: entry).withUnsafeBytes { raw in
                    scanStream(raw, entry: entry.name, maximumPickles: .max, into: &report, limits: limits)
                }
            }
            return report
        case .legacy, .pickle:
            return file.withUnsafeBytes { raw in
                let isLegacy = hasLegacyMagic(raw)
                var report = PickleScanReport(format: isLegacy ? "ckpt-legacy" : "pickle")
                scanStream(raw, entry: nil, maximumPickles: isLegacy ? 5 : .max, into: &report, limits: limits)
                return report
            }
        }
    }

    /// The pickled legacy magic number: PROTO 2, LONG1 10 bytes 0x1950a86a20f9469cfc6c, STOP.
    static let legacyMagicPickle: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E]

    static func hasLegacyMagic(_ raw: UnsafeRawBufferPointer) -> Bool {
        raw.count >= legacyMagicPickle.count && raw.prefix(legacyMagicPickle.count).elementsEqual(legacyMagicPickle)
    }

    static let legacyPickleNames = ["pickle 1 (magic)", "pickle 2 (protocol)", "pickle 3 (sys_info)", "pickle 4 (object)", "pickle 5 (storage keys)"]

    /// Walks concatenated pickles from the start of `raw`.
    static func scanStream(_ raw: UnsafeRawBufferPointer, entry: String?, maximumPickles: Int, into report: inout PickleScanReport, limits: PickleLimits) {
        var position = 0
        var n = 0
        while n < maximumPickles, position < raw.count {
            // After the first pickle, continue only where another pickle visibly starts.
            if n > 0, entry != nil || maximumPickles == .max, !(raw[position] == 0x80 && position + 1 < raw.count && raw[position + 1] <= 5) { break }
            let listing = PickleGlobalScanner.scan(raw, from: position, limits: limits)
            let name: String
            if let entry { name = n == 0 ? entry : "\(entry)#\(n + 1)" }
            else if maximumPickles == 5 { name = legacyPickleNames[n] }
            else { name = "pickle \(n + 1)" }
            // Offsets are reported relative to the entry (zip) or the file (legacy).
            report.add(listing, entry: name)
            n += 1
            guard let end = listing.endOffset else { break }
            position = end
        }
    }

    /// Whether a zip member should be walked as a pickle.
    static func looksLikePickle(_ entry: TorchArchive.Entry, in archive: TorchArchive) -> Bool {
        let name = entry.relativeName
        if name.hasSuffix(".pkl") || name.hasSuffix(".pickle") { return true }
        if isStorageRecord(name) { return false }
        guard entry.size >= 2 else { return false }
        return archive.bytes(of: entry).withUnsafeBytes { $0[0] == 0x80 && $0[1] <= 5 }
    }

    /// `data/<digits>`: raw storage bytes, never unpickled by torch.
    static func isStorageRecord(_ name: String) -> Bool {
        guard name.hasPrefix("data/") else { return false }
        let key = name.dropFirst(5)
        return !key.isEmpty && key.allSatisfy { $0.isASCII && $0.isNumber }
    }
}
