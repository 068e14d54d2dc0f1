import MappedIO
import SafePickle

extension TorchCheckpoint {
    /// Lists every global named by every pickle torch would unpickle in a file, without running
    /// any of them, each resolved as torch's unpickler would resolve it.
    ///
    /// Zip archives: every member torch could take for `data.pkl` (torch's zip reader looks
    /// names up case-insensitively, so `archive/DATA.PKL` is read too; two candidates make the
    /// file ambiguous, which is reported as an unresolved, dangerous finding), read whatever
    /// its first byte; then every other member ending in `.pkl` or `.pickle` or whose first
    /// bytes look like a pickle (`0x80` then a protocol 0–5), except the raw storage records
    /// `data/<n>`. Tar archives (PyTorch 0.1.x, recognised by a valid tar header checksum as
    /// Python's `tarfile` does): torch unpickles their members, which this walk does not
    /// follow, so the file gets one unresolved, dangerous finding. Any other file whose first
    /// byte is a pickle opcode: torch unpickles it from byte 0 (its first five pickles), so
    /// the first five pickles are walked whatever they start with, and any further pickle that
    /// visibly starts. Walks that stop early are listed in `problems`.
    ///
    /// - Throws: `FormatError` `.invalidArchive` for archives we cannot read at all (bad zip,
    ///   DEFLATE or encrypted entries) and for files whose first byte is not a pickle opcode
    ///   (torch cannot unpickle them either), `.io`.
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
            let candidates = dataPickleCandidates(archive)
            if candidates.count > 1 {
                let reason =
                    "\(candidates.count) members (\(candidates.map(\.name).joined(separator: ", "))) match data.pkl case-insensitively; which one torch reads depends on its zip reader"
                report.findings.append(.init(unresolved: reason, entry: candidates[0].name, opcode: "ZIP"))
                report.problems.append(reason)
            }
            for entry in candidates {
                archive.bytes(of: entry).withUnsafeBytes { raw in
                    scanStream(raw, entry: entry.name, maximumPickles: .max, context: .torchZip, into: &report, limits: limits)
                }
            }
            for entry in archive.entries where !candidates.contains(entry) && looksLikePickle(entry, in: archive) {
                archive.bytes(of: entry).withUnsafeBytes { raw in
                    scanStream(raw, entry: entry.name, maximumPickles: .max, context: .pickle, into: &report, limits: limits)
                }
            }
            return report
        case .tar:
            var report = PickleScanReport(format: "ckpt-tar")
            report.findings.append(
                .init(
                    unresolved:
                        "a tar-format (PyTorch 0.1.x) checkpoint: torch.load unpickles its members (storages, tensors, pickle), which this scan does not read",
                    entry: "tar", opcode: "TAR"))
            report.problems.append("tar-format checkpoints are not analysed; treat the file as unsafe")
            return report
        case .legacy, .pickle:
            return file.withUnsafeBytes { raw in
                let isLegacy = hasLegacyMagic(raw)
                var report = PickleScanReport(format: isLegacy ? "ckpt-legacy" : "pickle")
                // torch reads five pickles and then raw storages; a file without the legacy magic
                // may be meant for `pickle.load` in a loop, so later pickles that start are walked.
                scanStream(raw, entry: nil, maximumPickles: isLegacy ? 5 : .max, context: .pickle, into: &report, limits: limits)
                return report
            }
        }
    }

    /// The members torch's zip reader could return for `data.pkl`: miniz's
    /// `mz_zip_reader_locate_file` (flags 0, as `PyTorchStreamReader::getRecordID` calls it)
    /// compares names case-insensitively.
    static func dataPickleCandidates(_ archive: TorchArchive) -> [TorchArchive.Entry] {
        archive.entries.filter { asciiLowercased($0.relativeName) == "data.pkl" }
    }

    static func asciiLowercased(_ s: String) -> String {
        String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }, as: UTF8.self)
    }

    /// The pickled legacy magic number: PROTO 2, LONG1 10 bytes 0x1950a86a20f9469cfc6c, STOP.
    static let legacyMagicPickle: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E]

    static func hasLegacyMagic(_ raw: UnsafeRawBufferPointer) -> Bool {
        raw.count >= legacyMagicPickle.count && raw.prefix(legacyMagicPickle.count).elementsEqual(legacyMagicPickle)
    }

    static let legacyPickleNames = ["pickle 1 (magic)", "pickle 2 (protocol)", "pickle 3 (sys_info)", "pickle 4 (object)", "pickle 5 (storage keys)"]

    /// Walks concatenated pickles from the start of `raw`.
    ///
    /// A file (`entry == nil`) is what torch's legacy loader reads: five pickles in a row, each
    /// by a fresh unpickler (the fourth by torch's `UnpicklerWrapper`), whatever their first
    /// bytes; after the fifth only pickles that visibly start are walked. In a zip member
    /// (`entry != nil`) the first pickle is the one torch reads; later ones are walked when they
    /// visibly start.
    static func scanStream(
        _ raw: UnsafeRawBufferPointer, entry: String?, maximumPickles: Int, context: UnpicklerContext,
        into report: inout PickleScanReport, limits: PickleLimits
    ) {
        var position = 0
        var n = 0
        while n < maximumPickles, position < raw.count {
            let mustWalk = entry == nil ? n < 5 : n == 0
            if !mustWalk, !(raw[position] == 0x80 && position + 1 < raw.count && raw[position + 1] <= 5) { break }
            let pickleContext: UnpicklerContext = entry == nil ? (n == 3 ? .torchLegacy : .pickle) : (n == 0 ? context : .pickle)
            let listing = PickleGlobalScanner.scan(raw, from: position, limits: limits, context: pickleContext)
            let name: String
            if let entry {
                name = n == 0 ? entry : "\(entry)#\(n + 1)"
            } else if maximumPickles == 5 {
                name = legacyPickleNames[n]
            } else {
                name = "pickle \(n + 1)"
            }
            // Offsets are reported relative to the entry (zip) or the file (legacy).
            report.add(listing, entry: name)
            n += 1
            guard let end = listing.endOffset else { break }
            position = end
        }
    }

    /// Whether a zip member should be walked as a pickle.
    static func looksLikePickle(_ entry: TorchArchive.Entry, in archive: TorchArchive) -> Bool {
        let name = asciiLowercased(entry.relativeName)
        if name.hasSuffix(".pkl") || name.hasSuffix(".pickle") { return true }
        if isStorageRecord(entry.relativeName) { return false }
        guard entry.size >= 2 else { return false }
        return archive.bytes(of: entry).withUnsafeBytes { $0[0] == 0x80 && $0[1] <= 5 }
    }

    /// `data/<digits>`: raw storage bytes, never unpickled by torch.
    static func isStorageRecord(_ name: String) -> Bool {
        guard name.hasPrefix("data/") else { return false }
        let key = name.dropFirst(5)
        return !key.isEmpty && key.allSatisfy { $0.isASCII && $0.isNumber }
    }

    /// Whether the first 512 bytes are a tar header Python's `tarfile` accepts: its checksum
    /// field (bytes 148–155, octal text or base-256) equals the unsigned or the signed byte sum
    /// of the header with that field read as spaces (`tarfile.calc_chksums`). `torch.load`
    /// opens such a file with `tarfile.open` before anything else.
    static func isTarHeader(_ raw: UnsafeRawBufferPointer) -> Bool {
        guard raw.count >= 512 else { return false }
        // An all-zero block is an end-of-archive marker, not a member: torch then finds no
        // `storages` member and fails without unpickling anything.
        guard raw.prefix(512).contains(where: { $0 != 0 }) else { return false }
        let field = Array(raw[148..<156])
        var stored: Int
        if field[0] == 0x80 || field[0] == 0xFF {
            var n = 0
            for b in field.dropFirst() { n = n << 8 | Int(b) }
            stored = field[0] == 0xFF ? n - (1 << 56) : n
        } else {
            var text = field
            if let nul = text.firstIndex(of: 0) { text.removeSubrange(nul...) }
            guard text.allSatisfy({ $0 < 0x80 }) else { return false }
            // `int(s.strip() or "0", 8)`, where `str.strip` also strips \x1c-\x1f.
            let space: (UInt8) -> Bool = { $0 == 0x20 || ($0 >= 0x09 && $0 <= 0x0D) || ($0 >= 0x1C && $0 <= 0x1F) }
            if text.allSatisfy(space) {
                stored = 0
            } else {
                guard let v = PythonInteger.parse(text, base: 8, allowPrefix: true, isSpace: space) else { return false }
                stored = v
            }
        }
        var unsigned = 256, signed = 256
        for i in 0..<512 where !(148..<156).contains(i) {
            unsigned += Int(raw[i])
            signed += Int(Int8(bitPattern: raw[i]))
        }
        return stored == unsigned || stored == signed
    }
}
