import MappedIO
import SafePickle
import TensorCore

extension TorchCheckpoint {
    /// Member names (below the prefix) that mark a TorchScript archive.
    static func isTorchScript(_ archive: TorchArchive) -> Bool {
        archive.entries.contains { e in
            e.relativeName == "constants.pkl" || e.relativeName.hasPrefix("code/") || e.relativeName == "model.json"
                || e.relativeName == "attributes.pkl" || e.relativeName == "bytecode.pkl"
        }
    }

    static let torchScriptError = FormatError(
        .invalidArchive,
        "this is a TorchScript archive (constants.pkl, code/), not a torch.save checkpoint; save its state_dict() with torch.save to read it")

    static func loadZip(file: MappedFile, limits: PickleLimits, allowUnsafeGlobals: Bool) throws(FormatError) -> Loaded {
        let archive = try TorchArchive(file: file)
        if isTorchScript(archive) {
            throw torchScriptError
        }
        // torch finds data.pkl case-insensitively; read the member it would, and refuse a choice.
        let candidates = dataPickleCandidates(archive)
        guard candidates.count <= 1 else {
            throw FormatError(
                .invalidArchive,
                "zip archive has \(candidates.count) members named data.pkl in different cases; torch's choice among them is not defined")
        }
        guard let dataPickle = candidates.first else {
            throw FormatError(.invalidArchive, "zip archive has no \(archive.prefix)/data.pkl")
        }
        // Small records are checksummed (storages are too large to check on open).
        for entry in archive.entries where !isStorageRecord(entry.relativeName) {
            guard archive.checksumMatches(entry) else {
                throw FormatError(.checksumMismatch, "zip entry '\(entry.name)' does not match its CRC-32")
            }
        }
        var bigEndian = false
        if let order = archive.entry(named: "byteorder") {
            var text = archive.bytes(of: order).withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            while let last = text.last, last.isWhitespace { text.removeLast() }
            switch text {
            case "little": bigEndian = false
            case "big": bigEndian = true
            default: throw FormatError(.invalidArchive, "byteorder record says '\(text.prefix(40))', not 'little' or 'big'")
            }
        }
        let document: PickleDocument
        do throws(PickleError) {
            document = try archive.bytes(of: dataPickle).withUnsafeBytes { (raw) throws(PickleError) in
                try PickleMachine(limits: limits, context: .torchZip).load(raw)
            }
        } catch {
            throw pickleError(error, entry: dataPickle.name)
        }
        try checkBuiltGlobals(document, entry: dataPickle.name, allowUnsafeGlobals: allowUnsafeGlobals)

        // Persistent ids: ('storage', storage_type, key, location, numel).
        var storages: [PickleValueID: TorchStorage] = [:]
        var byKey: [String: TorchStorage] = [:]
        for pidValue in document.persistentValues {
            guard case .persistent(let pid) = document[pidValue] else { continue }
            let (key, storageClass, numel) = try parseStorageID(document, pid, expectedCount: 5)
            if let known = byKey[key] {
                storages[pidValue] = known
                continue
            }
            guard let record = archive.entry(named: "data/\(key)") else {
                throw FormatError(.invalidArchive, "storage '\(key)' has no record \(archive.prefix)/data/\(key) in the archive")
            }
            let (needed, overflow) = numel.multipliedReportingOverflow(by: storageClass.elementSize)
            guard !overflow else { throw FormatError(.validationOverflow, "storage '\(key)' size \(numel) × \(storageClass.elementSize) overflows") }
            guard record.size >= needed else {
                throw FormatError(.storageOutOfRange, "storage '\(key)' needs \(needed) bytes but its record holds \(record.size)")
            }
            let storage = TorchStorage(key: key, storageClass: storageClass, byteRange: record.dataOffset..<(record.dataOffset + needed))
            byKey[key] = storage
            storages[pidValue] = storage
        }
        let (tensors, metadata) = try extract(document, storages: storages)
        return Loaded(tensors: tensors, metadata: metadata, bigEndian: bigEndian)
    }

    /// Validates a storage persistent id tuple and returns its key, class and element count.
    static func parseStorageID(
        _ document: PickleDocument, _ pid: PickleValueID, expectedCount: Int
    ) throws(FormatError) -> (key: String, storageClass: TorchDTypes.StorageClass, numel: Int) {
        guard case .tuple(let items) = document[pid] else {
            throw FormatError(.invalidPickle, "persistent id is a \(document[pid].kindName), not a tuple")
        }
        guard let kind = items.first.flatMap({ document.string($0) }) else {
            throw FormatError(.invalidPickle, "persistent id does not start with a string")
        }
        guard kind == "storage" else {
            throw FormatError(
                .invalidPickle, "persistent id of kind '\(kind.prefix(40))' (only storages are supported; whole nn.Module pickles are not)")
        }
        guard items.count == expectedCount else {
            throw FormatError(.invalidPickle, "storage persistent id has \(items.count) fields, expected \(expectedCount)")
        }
        guard let type = document.global(items[1]) else {
            throw FormatError(.invalidPickle, "storage persistent id has no storage type")
        }
        let storageClass = try TorchDTypes.storageClass(type)
        guard let key = document.string(items[2]), !key.isEmpty, key.utf8.count <= 64,
            key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") })
        else {
            throw FormatError(.invalidPickle, "storage key is not a short alphanumeric string")
        }
        guard let numel = document.integer(items[4]), numel >= 0 else {
            throw FormatError(.invalidPickle, "storage '\(key)' has no valid element count")
        }
        return (key, storageClass, Int(numel))
    }
}
