import MappedIO
import SafePickle
import TensorCore

extension TorchCheckpoint {
    /// The legacy format: five stacked pickles (magic, protocol 1001, sys_info, the object,
    /// the storage keys) then, for each key in that list's order, an int64 little-endian
    /// element count and the storage's raw little-endian bytes.
    static func loadLegacy(file: MappedFile, limits: PickleLimits, allowUnsafeGlobals: Bool) throws(FormatError) -> Loaded {
        try file.withUnsafeBytes { (raw) throws(FormatError) -> Loaded in
            var position = 0
            var documents: [PickleDocument] = []
            for n in 0..<5 {
                let name = legacyPickleNames[n]
                let machine = PickleMachine(limits: limits, context: n == 3 ? .torchLegacy : .pickle)
                do throws(PickleError) {
                    let document = try machine.load(raw, from: position)
                    documents.append(document)
                    position = document.endOffset
                } catch {
                    throw pickleError(error, entry: name)
                }
                if n != 3, let g = documents[n].globals.first {
                    throw FormatError(.invalidArchive, "legacy \(name) names the global \(g.module).\(g.name); only the object pickle may")
                }
                if n == 0 {
                    let magic: [UInt8] = [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]
                    guard case .bigInt(let bytes) = documents[0][documents[0].root], bytes == magic else {
                        throw FormatError(.invalidArchive, "invalid magic number: not a PyTorch legacy checkpoint (or a corrupt one)")
                    }
                } else if n == 1 {
                    guard documents[1].integer(documents[1].root) == 1001 else {
                        throw FormatError(.invalidArchive, "invalid legacy protocol version (expected 1001)")
                    }
                } else if n == 2 {
                    guard case .dict = documents[2][documents[2].root] else {
                        throw FormatError(.invalidArchive, "legacy sys_info pickle is not a dict")
                    }
                }
            }
            let object = documents[3]
            try checkBuiltGlobals(object, entry: legacyPickleNames[3], allowUnsafeGlobals: allowUnsafeGlobals)
            let keyList = documents[4]
            guard let keyIDs = keyList.sequence(keyList.root) else {
                throw FormatError(.invalidArchive, "legacy storage key list is not a list")
            }
            var keys: [String] = []
            for id in keyIDs {
                guard let key = keyList.string(id) else {
                    throw FormatError(.invalidArchive, "legacy storage key list holds a \(keyList[id].kindName)")
                }
                keys.append(key)
            }

            // Persistent ids: ('storage', storage_type, root_key, location, numel, view_metadata).
            struct Root { var storageClass: TorchDTypes.StorageClass; var numel: Int }
            var roots: [String: Root] = [:]
            var uses: [(PickleValueID, String, (viewKey: String, offset: Int, size: Int)?)] = []
            for pidValue in object.persistentValues {
                guard case .persistent(let pid) = object[pidValue] else { continue }
                let (key, storageClass, numel) = try parseStorageID(object, pid, expectedCount: 6)
                if let known = roots[key] {
                    guard known.numel == numel, known.storageClass.elementSize == storageClass.elementSize else {
                        throw FormatError(.invalidPickle, "storage '\(key)' is described twice with different sizes or types")
                    }
                } else {
                    roots[key] = Root(storageClass: storageClass, numel: numel)
                }
                var view: (viewKey: String, offset: Int, size: Int)?
                if case .tuple(let items) = object[pid], items.count == 6, let meta = object.sequence(items[5]) {
                    guard meta.count == 3, let viewKey = object.string(meta[0]), let offset = object.integer(meta[1]),
                        let size = object.integer(meta[2]), offset >= 0, size >= 0
                    else {
                        throw FormatError(.invalidPickle, "storage '\(key)' has malformed view metadata")
                    }
                    view = (viewKey, Int(offset), Int(size))
                }
                uses.append((pidValue, key, view))
            }

            // Raw storages, in key-list order.
            var ranges: [String: Range<Int>] = [:]
            for key in keys {
                guard let root = roots[key] else {
                    throw FormatError(.invalidArchive, "legacy storage key list names '\(key.prefix(64))', which no tensor uses")
                }
                guard ranges[key] == nil else { throw FormatError(.invalidArchive, "legacy storage key list names '\(key)' twice") }
                guard position <= raw.count - 8 else {
                    throw FormatError(.storageOutOfRange, "file ends before storage '\(key)'")
                }
                var count: UInt64 = 0
                for i in (position..<(position + 8)).reversed() { count = count << 8 | UInt64(raw[i]) }
                guard count == UInt64(root.numel) else {
                    throw FormatError(.invalidArchive, "storage '\(key)' has \(count) elements in the file but \(root.numel) in the pickle")
                }
                let (bytes, overflow) = root.numel.multipliedReportingOverflow(by: root.storageClass.elementSize)
                let start = position + 8
                guard !overflow, bytes <= raw.count - start else {
                    throw FormatError(
                        .storageOutOfRange, "storage '\(key)' needs \(root.numel) × \(root.storageClass.elementSize) bytes but the file ends first")
                }
                ranges[key] = start..<(start + bytes)
                position = start + bytes
            }
            var storages: [PickleValueID: TorchStorage] = [:]
            for (pidValue, key, view) in uses {
                guard let range = ranges[key], let root = roots[key] else {
                    throw FormatError(.invalidArchive, "storage '\(key)' is missing from the legacy storage key list")
                }
                var storage = TorchStorage(key: key, storageClass: root.storageClass, byteRange: range)
                if let view {
                    let e = root.storageClass.elementSize
                    let (start, o1) = view.offset.multipliedReportingOverflow(by: e)
                    let (length, o2) = view.size.multipliedReportingOverflow(by: e)
                    guard !o1, !o2, start <= range.count, length <= range.count - start else {
                        throw FormatError(.storageOutOfRange, "storage view '\(view.viewKey)' reaches outside storage '\(key)'")
                    }
                    storage = TorchStorage(
                        key: view.viewKey, storageClass: root.storageClass,
                        byteRange: (range.lowerBound + start)..<(range.lowerBound + start + length))
                }
                storages[pidValue] = storage
            }
            let (tensors, metadata) = try extract(object, storages: storages)
            return Loaded(tensors: tensors, metadata: metadata, bigEndian: false)
        }
    }
}
