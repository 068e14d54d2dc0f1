/// What a linear walk of one pickle found: every global it names, where the pickle ended,
/// and the error that stopped the walk, if any.
public struct PickleGlobalListing: Sendable {
    public var globals: [PickleGlobalReference]
    /// Offset just after `STOP`, or `nil` when the walk stopped on an error first.
    public var endOffset: Int?
    /// Why the walk stopped before `STOP`.
    public var error: PickleError?
    /// The protocol declared by `PROTO`, or 0.
    public var protocolVersion: Int
}

/// Lists the globals a pickle names without running it.
///
/// A linear opcode walk in the manner of torch's `get_globals_in_pkl` and picklescan: every
/// `GLOBAL` and `INST` with its operands, and every `STACK_GLOBAL` whose two operands can be
/// traced statically to string literals, directly or through the memo (`BINPUT`/`MEMOIZE`
/// then `BINGET`). Anything else becomes `"unknown"` (unresolved, classified dangerous). It
/// accepts the opcodes the machine refuses (`INST`, `OBJ`, `EXT*`, `PERSID`, …), so it works
/// on pickles `PickleMachine` rejects, and it reports what it saw before an error.
///
/// It reads as CPython's C unpickler does, so that it sees what `torch.load` would run: `FRAME`
/// boundaries are ignored (only the length must be available); the protocol in force is the
/// last `PROTO` seen (a `PROTO` may come anywhere), and each global is recorded with it so it
/// resolves as `find_class` would (`GlobalResolver`); text memo indices (`PUT`/`GET`) are read
/// with `PythonInteger.parseDecimalLine`, CPython's reading, and a line CPython cannot read
/// ends the walk as it ends the unpickler. Where the walk stops for a reason of its own (a
/// `PickleLimits` bound) while CPython would go on, an unresolved reference is added: the rest
/// of the pickle is unseen, so the listing cannot call it safe.
public enum PickleGlobalScanner {
    /// What an opcode left on top of the stack, as far as this walk can tell.
    private enum Produced: Equatable {
        case string(String)
        case other
    }

    /// Walks one pickle from `start` to its `STOP` (or to the first error).
    /// - Parameter context: the unpickler the pickle is meant for (how its globals resolve).
    /// - Complexity: O(input bytes); memory O(memo entries).
    public static func scan(
        _ input: UnsafeRawBufferPointer, from start: Int = 0, limits: PickleLimits = .default, context: UnpicklerContext = .pickle
    ) -> PickleGlobalListing {
        var reader = PickleReader(input, position: start, maximumLiteralBytes: limits.maximumLiteralBytes, enforcesFrames: false)
        var listing = PickleGlobalListing(globals: [], endOffset: nil, error: nil, protocolVersion: 0)
        var memo: [Int: Produced] = [:]
        var last: Produced = .other
        var beforeLast: Produced = .other
        var opcodes = 0
        var proto = 0
        var sawProto = false

        func produce(_ p: Produced) {
            beforeLast = last
            last = p
        }
        func text(_ range: Range<Int>) -> String? {
            String(validating: UnsafeRawBufferPointer(rebasing: input[range]), as: UTF8.self)
        }
        func hidden(_ error: PickleError, opcode: PickleOpcode) {
            listing.globals.append(
                PickleGlobalReference(
                    module: "unknown", name: "unknown", offset: error.offset, opcode: opcode, isResolved: false,
                    protocolVersion: proto, context: context,
                    reason: "the rest of the pickle is hidden from this walk (\(error.message)) but an unpickler would read on"))
        }

        while true {
            if reader.isAtEnd {
                listing.error = PickleError(.truncated, "pickle ends without STOP", at: reader.position)
                return listing
            }
            opcodes += 1
            if opcodes > limits.maximumOpcodes {
                let error = PickleError(.limitExceeded, "more than \(limits.maximumOpcodes) opcodes", at: reader.position)
                listing.error = error
                hidden(error, opcode: .stop)
                return listing
            }
            let instruction: PickleInstruction
            do throws(PickleError) {
                instruction = try reader.next()
            } catch {
                listing.error = error
                if error.code == .limitExceeded { hidden(error, opcode: .stop) }
                return listing
            }
            let op = instruction.opcode
            func reference(module: String, name: String, resolved: Bool = true) -> PickleGlobalReference {
                PickleGlobalReference(
                    module: module, name: name, offset: instruction.offset, opcode: op, isResolved: resolved,
                    protocolVersion: proto, context: context,
                    reason: resolved ? nil : "operands cannot be traced statically")
            }
            switch (op, instruction.argument) {
            case (.stop, _):
                listing.endOffset = reader.position
                return listing
            case (.proto, .integer(let v)):
                // CPython accepts any PROTO up to its highest protocol, anywhere; it sets the
                // protocol later globals resolve with.
                guard v <= 5 else {
                    listing.error = PickleError(.invalidProtocol, "unsupported pickle protocol \(v)", at: instruction.offset)
                    return listing
                }
                proto = v
                if !sawProto { listing.protocolVersion = v; sawProto = true }
            case (.frame, _), (.put, _), (.binPut, _), (.longBinPut, _), (.memoize, _):
                break
            case (.global, .lines(let m, let n)), (.inst, .lines(let m, let n)):
                guard let module = text(m), let name = text(n) else {
                    // CPython decodes both lines as UTF-8 and stops here when it cannot.
                    listing.error = PickleError(.invalidValue, "\(op.name) operand is not valid UTF-8", at: instruction.offset)
                    return listing
                }
                listing.globals.append(reference(module: module, name: name))
                produce(.other)
            case (.stackGlobal, _):
                if case .string(let module) = beforeLast, case .string(let name) = last {
                    listing.globals.append(reference(module: module, name: name))
                } else {
                    listing.globals.append(reference(module: "unknown", name: "unknown", resolved: false))
                }
                produce(.other)
            case (.ext1, .integer(let code)), (.ext2, .integer(let code)), (.ext4, .integer(let code)):
                var ext = reference(module: "copyreg", name: "extension \(code)", resolved: false)
                ext.reason = "an extension-registry code names a global only the running process knows"
                listing.globals.append(ext)
                produce(.other)
            case (.binUnicode, .bytes(let r)), (.shortBinUnicode, .bytes(let r)), (.binUnicode8, .bytes(let r)),
                (.binString, .bytes(let r)), (.shortBinString, .bytes(let r)):
                produce(text(r).map(Produced.string) ?? .other)
            case (.unicode, .bytes(let r)):
                produce(PickleText.rawUnicodeEscape(UnsafeRawBufferPointer(rebasing: input[r])).map(Produced.string) ?? .other)
            case (.string, .bytes(let r)):
                let decoded = PickleText.quotedString(UnsafeRawBufferPointer(rebasing: input[r])).flatMap {
                    String(validating: $0, as: UTF8.self)
                }
                produce(decoded.map(Produced.string) ?? .other)
            case (.dup, _):
                produce(last)
            case (.get, .bytes(let r)):
                guard let i = PythonInteger.parseDecimalLine(UnsafeRawBufferPointer(rebasing: input[r])), i >= 0 else {
                    listing.error = PickleError(.invalidValue, "GET index is not an integer CPython reads", at: instruction.offset)
                    return listing
                }
                produce(memo[i] ?? .other)
            case (.binGet, .integer(let i)), (.longBinGet, .integer(let i)):
                produce(memo[i] ?? .other)
            default:
                produce(.other)
            }
            // Memo stores record what is on top of the stack now.
            switch (op, instruction.argument) {
            case (.put, .bytes(let r)):
                guard let i = PythonInteger.parseDecimalLine(UnsafeRawBufferPointer(rebasing: input[r])), i >= 0 else {
                    listing.error = PickleError(.invalidValue, "PUT index is not a non-negative integer CPython reads", at: instruction.offset)
                    return listing
                }
                guard store(i, last) else { return memoFull() }
            case (.binPut, .integer(let i)), (.longBinPut, .integer(let i)):
                guard store(i, last) else { return memoFull() }
            case (.memoize, _):
                guard store(memo.count, last) else { return memoFull() }
            default:
                break
            }

            func memoFull() -> PickleGlobalListing {
                let error = PickleError(.limitExceeded, "more than \(limits.maximumMemoEntries) memo entries", at: instruction.offset)
                listing.error = error
                hidden(error, opcode: op)
                return listing
            }
        }

        /// Records a memo entry; `false` past the bound (`MEMOIZE` indices would drift from
        /// CPython's, so the walk cannot go on).
        func store(_ index: Int, _ value: Produced) -> Bool {
            if memo[index] == nil, memo.count >= limits.maximumMemoEntries { return false }
            memo[index] = value
            return true
        }
    }

    /// Walks one pickle held in an array.
    public static func scan(
        _ bytes: [UInt8], from start: Int = 0, limits: PickleLimits = .default, context: UnpicklerContext = .pickle
    ) -> PickleGlobalListing {
        bytes.withUnsafeBytes { scan($0, from: start, limits: limits, context: context) }
    }
}
