/// The index of a value in a `PickleDocument`'s arena.
public struct PickleValueID: Hashable, Sendable, CustomStringConvertible {
    public let index: Int
    init(_ index: Int) { self.index = index }
    public var description: String { "#\(index)" }
}

/// A `GLOBAL`, `STACK_GLOBAL` or `INST` name: never imported, only recorded.
public struct PickleGlobal: Hashable, Sendable, CustomStringConvertible {
    public var module: String
    public var name: String
    public init(module: String, name: String) {
        self.module = module
        self.name = name
    }
    /// `module.name`.
    public var qualifiedName: String { module.isEmpty ? name : "\(module).\(name)" }
    public var description: String { qualifiedName }
}

/// One value built by the pickle machine. Containers refer to their elements by index, so
/// no value is recursive in Swift's sense: building or freeing a hostile, deeply nested or
/// cyclic pickle never recurses.
public enum PickleValue: Hashable, Sendable {
    case none
    case bool(Bool)
    case int(Int64)
    /// An integer that does not fit 64 bits, as two's-complement little-endian bytes.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple([PickleValueID])
    /// Elements are in `PickleDocument.elements(of:)`.
    case list
    /// Key/value pairs are in `PickleDocument.items(of:)`. `ordered` for `OrderedDict()`.
    case dict(ordered: Bool)
    case set
    case frozenSet([PickleValueID])
    case global(PickleGlobal)
    /// A symbolic call: `REDUCE` (`callable(*arguments)`) or `NEWOBJ` (`cls.__new__(cls, *arguments)`).
    /// Never performed.
    case call(PickleCall)
    /// The result of `BINPERSID` with this persistent id.
    case persistent(PickleValueID)
}

/// A call the pickle asks for, recorded and never made.
public struct PickleCall: Hashable, Sendable {
    public enum Kind: Hashable, Sendable { case reduce, newObject }
    public var kind: Kind
    public var callable: PickleValueID
    public var arguments: PickleValueID
}

/// Everything one pickle built: the value arena, the root value, and what it named.
public struct PickleDocument: Sendable {
    /// Every value, indexed by `PickleValueID`.
    public internal(set) var values: [PickleValue] = []
    /// Mutable container contents (lists, sets: elements; dicts and called objects: flat key, value pairs).
    var containers: [Int: [PickleValueID]] = [:]
    /// List-like items appended to called objects (`APPEND` on a `REDUCE` result).
    var appended: [Int: [PickleValueID]] = [:]
    /// `BUILD` states, by the value they were applied to (the last one wins).
    public internal(set) var states: [PickleValueID: PickleValueID] = [:]
    /// What `STOP` returned.
    public internal(set) var root = PickleValueID(0)
    /// Every global the pickle named, in order, with the offset of the naming opcode.
    public internal(set) var globals: [PickleGlobalReference] = []
    /// Every `BINPERSID` result, in order.
    public internal(set) var persistentValues: [PickleValueID] = []
    /// The protocol declared by `PROTO`, or 0 without one.
    public internal(set) var protocolVersion = 0
    /// The offset just after `STOP`.
    public internal(set) var endOffset = 0

    init() {}

    public subscript(id: PickleValueID) -> PickleValue { values[id.index] }

    /// The elements of a list, set, tuple or frozen set, or the list items appended to a call.
    public func elements(of id: PickleValueID) -> [PickleValueID] {
        switch values[id.index] {
        case .tuple(let items), .frozenSet(let items): items
        case .list, .set: containers[id.index] ?? []
        case .call: appended[id.index] ?? []
        default: []
        }
    }

    /// The key/value pairs of a dict, or the items set on a call result (`SETITEM` on an
    /// `OrderedDict(...)` or a custom mapping), in insertion order (duplicates kept).
    public func items(of id: PickleValueID) -> [(key: PickleValueID, value: PickleValueID)] {
        switch values[id.index] {
        case .dict, .call: break
        default: return []
        }
        guard let flat = containers[id.index] else { return [] }
        var result: [(key: PickleValueID, value: PickleValueID)] = []
        result.reserveCapacity(flat.count / 2)
        var i = 0
        while i + 1 < flat.count {
            result.append((flat[i], flat[i + 1]))
            i += 2
        }
        return result
    }

    /// The string value, if `id` is a string.
    public func string(_ id: PickleValueID) -> String? {
        if case .string(let s) = values[id.index] { return s }
        return nil
    }

    /// The integer value, if `id` is an integer that fits 64 bits (booleans excluded).
    public func integer(_ id: PickleValueID) -> Int64? {
        if case .int(let v) = values[id.index] { return v }
        return nil
    }

    /// The global, if `id` is a global symbol.
    public func global(_ id: PickleValueID) -> PickleGlobal? {
        if case .global(let g) = values[id.index] { return g }
        return nil
    }

    /// The call, if `id` is a symbolic call.
    public func call(_ id: PickleValueID) -> PickleCall? {
        if case .call(let c) = values[id.index] { return c }
        return nil
    }

    /// The elements of a tuple or list.
    public func sequence(_ id: PickleValueID) -> [PickleValueID]? {
        switch values[id.index] {
        case .tuple(let items): items
        case .list: containers[id.index] ?? []
        default: nil
        }
    }
}

extension PickleValue {
    /// A short name of the kind of value, for messages.
    public var kindName: String {
        switch self {
        case .none: "None"
        case .bool: "bool"
        case .int, .bigInt: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .tuple: "tuple"
        case .list: "list"
        case .dict: "dict"
        case .set: "set"
        case .frozenSet: "frozenset"
        case .global: "global"
        case .call: "call"
        case .persistent: "persistent id"
        }
    }
}
