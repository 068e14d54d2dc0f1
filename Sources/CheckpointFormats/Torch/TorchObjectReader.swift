import SafePickle
import TensorCore

/// A storage a persistent id resolved to: where its bytes are in the file.
struct TorchStorage: Sendable {
    var key: String
    var storageClass: TorchDTypes.StorageClass
    /// The storage's bytes in the file (exactly `numel × element size`).
    var byteRange: Range<Int>
}

/// How to produce one tensor's bytes from its storage.
struct TorchTensorRecipe: Sendable {
    var descriptor: TensorDescriptor
    var storageKey: String
    /// The storage's bytes in the file.
    var storageRange: Range<Int>
    /// Offset of element 0 of the view in the storage, in bytes.
    var byteOffset: Int
    var sizes: [Int]
    /// Strides in elements.
    var strides: [Int]
    var elementSize: Int
    var isContiguous: Bool
}

/// Finds tensors and metadata in the object a checkpoint pickle built, without recursion a
/// hostile graph could exhaust: explicit work stacks, a depth bound and a visit budget
/// (so memo "billion laughs" graphs fail fast instead of being walked exponentially).
struct TorchObjectReader {
    let document: PickleDocument
    /// Resolved storages, by the `BINPERSID` value that names them.
    let storages: [PickleValueID: TorchStorage]

    /// Deepest dict/list nesting we walk for tensor names.
    static let maximumDepth = 100
    /// Largest expanded (overlapping-stride) view gathered into memory: 1 GiB.
    static let maximumExpandedBytes = 1 << 30
    var visitBudget: Int

    init(document: PickleDocument, storages: [PickleValueID: TorchStorage]) {
        self.document = document
        self.storages = storages
        visitBudget = max(1_000_000, 4 * document.values.count)
    }

    private static let rebuildFunctions: Set<String> = [
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter", "_rebuild_parameter_with_state",
    ]
    private static let refusedRebuilds: [String: String] = [
        "_rebuild_qtensor": "quantized tensors", "_rebuild_sparse_tensor": "sparse tensors",
        "_rebuild_sparse_csr_tensor": "sparse tensors", "_rebuild_meta_tensor_no_storage": "meta tensors (no data)",
        "_rebuild_wrapper_subclass": "tensor wrapper subclasses", "_rebuild_nested_tensor": "nested tensors",
        "_rebuild_device_tensor_from_cpu_tensor": "device tensors", "_rebuild_device_tensor_from_numpy": "tensors rebuilt from numpy arrays",
        "_rebuild_xla_tensor": "XLA tensors", "_rebuild_mtia_tensor": "MTIA tensors",
    ]

    /// Whether `id` is a call of a tensor rebuild function (without checking its arguments).
    func isTensorCall(_ id: PickleValueID) -> Bool {
        guard let call = document.call(id), call.kind == .reduce, let g = document.global(call.callable) else { return false }
        return (g.module == "torch._utils" && (Self.rebuildFunctions.contains(g.name) || Self.refusedRebuilds[g.name] != nil))
            || (g.module == "torch._tensor" && g.name == "_rebuild_from_type_v2")
    }

    /// The tensor `id` rebuilds, or `nil` when it is not a tensor call.
    func tensor(_ id: PickleValueID, name: String) throws(FormatError) -> TorchTensorRecipe? {
        var current = id
        // Wrappers (`_rebuild_parameter`, `_rebuild_from_type_v2`) nest a handful of levels at most.
        for _ in 0..<8 {
            guard let call = document.call(current), call.kind == .reduce, let g = document.global(call.callable),
                let args = document.sequence(call.arguments)
            else { return nil }
            switch (g.module, g.name) {
            case ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"):
                guard let first = args.first else { throw bad("\(g.name) without arguments", name) }
                guard isTensorCall(first) else { throw bad("\(g.name) of something that is not a tensor", name) }
                current = first
            case ("torch._tensor", "_rebuild_from_type_v2"):
                guard args.count >= 3, let function = document.global(args[0]), let inner = document.sequence(args[2]) else {
                    throw bad("malformed _rebuild_from_type_v2 arguments", name)
                }
                return try rebuild(function, inner, name: name)
            case ("torch._utils", _):
                return try rebuild(g, args, name: name)
            default:
                return nil
            }
        }
        throw bad("tensor wrappers nested too deeply", name)
    }

    private func bad(_ message: String, _ name: String) -> FormatError {
        FormatError(.invalidPickle, message, tensor: name)
    }

    private func integers(_ id: PickleValueID, what: String, name: String) throws(FormatError) -> [Int] {
        var seq = document.sequence(id)
        // `torch.Size((…))` spelled as a call.
        if seq == nil, let call = document.call(id), let g = document.global(call.callable), g.module == "torch", g.name == "Size",
            let args = document.sequence(call.arguments), let first = args.first
        {
            seq = document.sequence(first)
        }
        guard let items = seq else { throw bad("tensor \(what) is not a tuple of integers", name) }
        var result: [Int] = []
        result.reserveCapacity(items.count)
        for item in items {
            guard let v = document.integer(item) else { throw bad("tensor \(what) holds a \(document[item].kindName)", name) }
            result.append(Int(v))
        }
        return result
    }

    private func rebuild(_ function: PickleGlobal, _ args: [PickleValueID], name: String) throws(FormatError) -> TorchTensorRecipe {
        guard function.module == "torch._utils" else {
            throw FormatError(.unsupportedTensor, "tensor rebuilt by \(function.qualifiedName) is not supported", tensor: name)
        }
        if let what = Self.refusedRebuilds[function.name] {
            throw FormatError(.unsupportedTensor, "\(what) are not supported (\(function.name))", tensor: name)
        }
        guard ["_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"].contains(function.name) else {
            throw FormatError(.unsupportedTensor, "tensor rebuilt by \(function.qualifiedName) is not supported", tensor: name)
        }
        guard args.count >= 4 else { throw bad("\(function.name) with \(args.count) arguments", name) }
        guard case .persistent = document[args[0]], let storage = storages[args[0]] else {
            throw bad("\(function.name) whose storage is not a persistent storage id", name)
        }
        guard let offset = document.integer(args[1]) else { throw bad("tensor storage offset is not an integer", name) }
        let sizes = try integers(args[2], what: "size", name: name)
        let strides = try integers(args[3], what: "stride", name: name)

        var dtype: DType
        if function.name == "_rebuild_tensor_v3" {
            guard args.count >= 7, let g = document.global(args[6]) else { throw bad("_rebuild_tensor_v3 without a dtype", name) }
            do throws(FormatError) { dtype = try TorchDTypes.dtype(g) } catch { throw error.inTensor(name) }
            if args.count >= 8 { try checkMetadata(args[7], name: name) }
        } else {
            guard let storageDType = storage.storageClass.dtype else {
                throw bad("\(function.name) over an UntypedStorage (needs _rebuild_tensor_v3's dtype)", name)
            }
            dtype = storageDType
            if function.name == "_rebuild_tensor_v2", args.count >= 7 { try checkMetadata(args[6], name: name) }
        }
        guard let elementSize = dtype.byteWidth else {
            throw FormatError(.unsupportedDType, "\(dtype.name) tensors are not supported", tensor: name)
        }
        return try TorchObjectReader.recipe(
            name: name, dtype: dtype, elementSize: elementSize, storage: storage,
            offset: offset, sizes: sizes, strides: strides)
    }

    private func checkMetadata(_ id: PickleValueID, name: String) throws(FormatError) {
        switch document[id] {
        case .none: return
        case .dict, .call:
            if document.items(of: id).isEmpty { return }
            throw FormatError(.unsupportedTensor, "tensors with conj/neg metadata are not supported", tensor: name)
        default: return
        }
    }

    /// Checks a view against its storage with overflow-checked arithmetic and describes it.
    static func recipe(
        name: String, dtype: DType, elementSize: Int, storage: TorchStorage,
        offset: Int64, sizes: [Int], strides: [Int]
    ) throws(FormatError) -> TorchTensorRecipe {
        func outOfRange(_ message: String) -> FormatError { FormatError(.storageOutOfRange, message, tensor: name) }
        guard sizes.count == strides.count else {
            throw FormatError(.invalidPickle, "tensor has \(sizes.count) sizes but \(strides.count) strides", tensor: name)
        }
        guard sizes.count <= Shape.maximumRank else {
            throw FormatError(.unsupportedTensor, "tensor has \(sizes.count) dimensions (at most \(Shape.maximumRank))", tensor: name)
        }
        guard offset >= 0, sizes.allSatisfy({ $0 >= 0 }) else {
            throw outOfRange("tensor has a negative offset or size")
        }
        guard strides.allSatisfy({ $0 >= 0 }) else {
            throw FormatError(.unsupportedTensor, "tensor has a negative stride \(strides)", tensor: name)
        }
        var count = 1
        for s in sizes {
            let (p, o) = count.multipliedReportingOverflow(by: s)
            guard !o else { throw FormatError(.validationOverflow, "element count of shape \(sizes) overflows", tensor: name) }
            count = p
        }
        let (byteCount, o1) = count.multipliedReportingOverflow(by: elementSize)
        guard !o1 else { throw FormatError(.validationOverflow, "byte count of shape \(sizes) overflows", tensor: name) }
        let storageBytes = storage.byteRange.count
        let (byteOffset, o2) = Int(offset).multipliedReportingOverflow(by: elementSize)
        guard !o2 else { throw outOfRange("tensor offset \(offset) overflows") }
        if count > 0 {
            // The last element the view touches: offset + Σ (size − 1) · stride.
            var last = Int(offset)
            for (s, st) in zip(sizes, strides) {
                let (step, a) = (s - 1).multipliedReportingOverflow(by: st)
                let (sum, b) = last.addingReportingOverflow(step)
                guard !a, !b else { throw outOfRange("tensor view extent overflows") }
                last = sum
            }
            let (endElement, c) = last.addingReportingOverflow(1)
            let (endByte, d) = endElement.multipliedReportingOverflow(by: elementSize)
            guard !c, !d, endByte <= storageBytes else {
                throw outOfRange(
                    "tensor view (offset \(offset), size \(sizes), stride \(strides)) reaches byte \(c || d ? "∞" : String(endByte)) of storage '\(storage.key)' which holds \(storageBytes) bytes"
                )
            }
        }
        // Only a view whose strides overlap (an expanded tensor) holds more bytes than its storage,
        // and gathering it allocates all of them: the file does not bound that, so cap it.
        if byteCount > storageBytes, byteCount > maximumExpandedBytes {
            throw FormatError(
                .unsupportedTensor,
                "tensor is an expanded view of \(byteCount) bytes over a \(storageBytes)-byte storage (at most \(maximumExpandedBytes) bytes are gathered)",
                tensor: name)
        }
        var contiguous = true
        var expected = 1
        for i in stride(from: sizes.count - 1, through: 0, by: -1) where sizes[i] != 1 {
            if strides[i] != expected { contiguous = false; break }
            expected &*= sizes[i]
        }
        if count == 0 { contiguous = true }
        // A dimension of size 1 is never stepped along, so its stride cannot matter and the extent
        // check cannot bound it; zero it so the gather's offset arithmetic cannot overflow.
        let gatherStrides = zip(sizes, strides).map { size, stride in size == 1 ? 0 : stride }
        return TorchTensorRecipe(
            descriptor: TensorDescriptor(name: name, dtype: dtype, shape: Shape(sizes), byteCount: byteCount),
            storageKey: storage.key, storageRange: storage.byteRange, byteOffset: count == 0 ? 0 : byteOffset,
            sizes: sizes, strides: gatherStrides, elementSize: elementSize, isContiguous: contiguous)
    }

    // MARK: walking the object

    /// A dict-like value's items with Python semantics: later duplicates of a key replace the
    /// value but keep the first position.
    func dictItems(_ id: PickleValueID) -> [(key: String, value: PickleValueID)]? {
        switch document[id] {
        case .dict: break
        case .call where !isTensorCall(id) && !document.items(of: id).isEmpty: break
        default: return nil
        }
        var order: [String] = []
        var values: [String: PickleValueID] = [:]
        for (k, v) in document.items(of: id) {
            let key = keyText(k)
            if values.updateValue(v, forKey: key) == nil { order.append(key) }
        }
        return order.map { ($0, values[$0]!) }
    }

    func keyText(_ id: PickleValueID) -> String {
        switch document[id] {
        case .string(let s): s
        case .int(let v): String(v)
        case .global(let g): g.qualifiedName
        default: describe(id, limit: 120)
        }
    }

    /// Collects tensors (with '.'-joined names) and non-tensor values (as metadata) under `root`.
    mutating func collect(
        _ root: PickleValueID, prefix: String, tensors: inout [TorchTensorRecipe], metadata: inout [String: String],
        tensorsAllowed: Bool
    ) throws(FormatError) {
        var work: [(PickleValueID, String, Int)] = [(root, prefix, 0)]
        while let (id, name, depth) = work.popLast() {
            visitBudget -= 1
            guard visitBudget >= 0 else {
                throw FormatError(.invalidPickle, "the pickled object graph is too large to walk (shared references repeated too often)")
            }
            guard depth <= Self.maximumDepth else {
                throw FormatError(.invalidPickle, "dictionaries nested deeper than \(Self.maximumDepth) levels at '\(name.prefix(200))'")
            }
            if isTensorCall(id) {
                if tensorsAllowed, let recipe = try tensor(id, name: name.isEmpty ? "tensor" : name) {
                    tensors.append(recipe)
                } else {
                    metadata[name.isEmpty ? "value" : name] = describe(id, limit: 200)
                }
                continue
            }
            if let items = dictItems(id), !items.isEmpty {
                for (key, value) in items.reversed() {
                    work.append((value, name.isEmpty ? key : "\(name).\(key)", depth + 1))
                }
                continue
            }
            if tensorsAllowed, let seq = document.sequence(id), !seq.isEmpty, seq.contains(where: { isTensorCall($0) || dictItems($0) != nil }) {
                for (i, value) in seq.enumerated().reversed() {
                    work.append((value, name.isEmpty ? String(i) : "\(name).\(i)", depth + 1))
                }
                continue
            }
            metadata[name.isEmpty ? "value" : name] = describe(id, limit: 200)
        }
    }

    /// Whether a dict-like value holds tensors directly or one level down.
    func holdsTensors(_ id: PickleValueID) -> Bool {
        guard let items = dictItems(id) else { return false }
        for (_, v) in items.prefix(10_000) {
            if isTensorCall(v) { return true }
            if let inner = dictItems(v), inner.prefix(10_000).contains(where: { isTensorCall($0.value) }) { return true }
        }
        return false
    }

    // MARK: describing values

    /// A short Python-like rendering of a value, at most `limit` characters.
    func describe(_ id: PickleValueID, limit: Int) -> String {
        var out = ""
        var budget = 64  // values rendered
        render(id, into: &out, depth: 0, top: true, budget: &budget, limit: limit)
        if out.count > limit { out = String(out.prefix(limit - 1)) + "…" }
        return out
    }

    private func render(_ id: PickleValueID, into out: inout String, depth: Int, top: Bool, budget: inout Int, limit: Int) {
        budget -= 1
        if budget < 0 || depth > 6 || out.count > limit { out += "…"; return }
        func list(_ items: [PickleValueID], _ open: String, _ close: String) {
            out += open
            for (i, item) in items.enumerated() {
                if i > 0 { out += ", " }
                if out.count > limit || budget <= 0 { out += "…"; break }
                render(item, into: &out, depth: depth + 1, top: false, budget: &budget, limit: limit)
            }
            if items.count == 1, open == "(" { out += "," }
            out += close
        }
        switch document[id] {
        case .none: out += "None"
        case .bool(let b): out += b ? "True" : "False"
        case .int(let v): out += String(v)
        case .bigInt(let bytes): out += "0x" + PickleIntegerText.hex(bytes)
        case .float(let v): out += PickleIntegerText.python(v)
        case .string(let s): out += top ? s : "'\(s)'"
        case .bytes(let b): out += "<\(b.count) bytes>"
        case .tuple(let items): list(items, "(", ")")
        case .list: list(document.elements(of: id), "[", "]")
        case .set, .frozenSet: list(document.elements(of: id), "{", "}")
        case .dict:
            out += "{"
            for (i, (k, v)) in document.items(of: id).enumerated() {
                if i > 0 { out += ", " }
                if out.count > limit || budget <= 0 { out += "…"; break }
                render(k, into: &out, depth: depth + 1, top: false, budget: &budget, limit: limit)
                out += ": "
                render(v, into: &out, depth: depth + 1, top: false, budget: &budget, limit: limit)
            }
            out += "}"
        case .global(let g): out += g.qualifiedName
        case .persistent: out += "<storage>"
        case .call(let call):
            if let scalar = numpyScalar(call) { out += scalar; return }
            if let g = document.global(call.callable), isTensorCall(id) {
                out += "<tensor \(g.name)>"
                return
            }
            render(call.callable, into: &out, depth: depth + 1, top: false, budget: &budget, limit: limit)
            render(call.arguments, into: &out, depth: depth + 1, top: false, budget: &budget, limit: limit)
        }
    }

    /// The value of a pickled numpy scalar (`numpy.core.multiarray.scalar(dtype, bytes)`).
    func numpyScalar(_ call: PickleCall) -> String? {
        guard let g = document.global(call.callable), g.name == "scalar",
            g.module == "numpy.core.multiarray" || g.module == "numpy._core.multiarray",
            let args = document.sequence(call.arguments), args.count == 2,
            let dtypeCall = document.call(args[0]), let dtypeArgs = document.sequence(dtypeCall.arguments),
            let typeCode = dtypeArgs.first.flatMap({ document.string($0) })
        else { return nil }
        var raw: [UInt8]
        switch document[args[1]] {
        case .bytes(let b): raw = b
        case .call(let encode):
            guard let e = document.global(encode.callable), e.name == "encode", let ea = document.sequence(encode.arguments),
                let text = ea.first.flatMap({ document.string($0) })
            else { return nil }
            raw = []
            for scalar in text.unicodeScalars {
                guard scalar.value <= 0xFF else { return nil }
                raw.append(UInt8(scalar.value))
            }
        default: return nil
        }
        func load<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard raw.count == MemoryLayout<T>.size else { return nil }
            var v: T = 0
            for b in raw.reversed() { v = v << 8 | T(truncatingIfNeeded: b) }
            return v
        }
        switch typeCode {
        case "f8": return load(UInt64.self).map { PickleIntegerText.python(Double(bitPattern: $0)) }
        case "f4": return load(UInt32.self).map { PickleIntegerText.python(Double(Float(bitPattern: $0))) }
        case "f2": return load(UInt16.self).map { PickleIntegerText.python(Double(Float(halfBits: $0))) }
        case "i8": return load(Int64.self).map { String($0) }
        case "i4": return load(Int32.self).map { String($0) }
        case "i2": return load(Int16.self).map { String($0) }
        case "i1": return load(Int8.self).map { String($0) }
        case "u8": return load(UInt64.self).map { String($0) }
        case "u4": return load(UInt32.self).map { String($0) }
        case "u2": return load(UInt16.self).map { String($0) }
        case "u1": return load(UInt8.self).map { String($0) }
        case "b1": return load(UInt8.self).map { $0 != 0 ? "True" : "False" }
        default: return nil
        }
    }
}

/// Number formatting in Python's style.
enum PickleIntegerText {
    static func hex(_ littleEndian: [UInt8]) -> String {
        littleEndian.reversed().map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
    }

    /// `repr(float)`: shortest round-trip digits, `inf`, `nan`, and a `.0` on integral values.
    static func python(_ v: Double) -> String {
        if v.isNaN { return "nan" }
        if v.isInfinite { return v < 0 ? "-inf" : "inf" }
        return v.description
    }
}
