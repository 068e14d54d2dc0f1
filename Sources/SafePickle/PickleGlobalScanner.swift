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
public enum PickleGlobalScanner {
    /// What an opcode left on top of the stack, as far as this walk can tell.
    private enum Produced: Equatable {
        case string(String)
        case other
    }

    /// Walks one pickle from `start` to its `STOP` (or to the first error).
    /// - Complexity: O(input bytes); memory O(memo entries).
    public static func scan(_ input: UnsafeRawBufferPointer, from start: Int = 0, limits: PickleLimits = .default) -> PickleGlobalListing {
        var reader = PickleReader(input, position: start, maximumLiteralBytes: limits.maximumLiteralBytes)
        var listing = PickleGlobalListing(globals: [], endOffset: nil, error: nil, protocolVersion: 0)
        var memo: [Int: Produced] = [:]
        var last: Produced = .other
        var beforeLast: Produced = .other
        var opcodes = 0

        func produce(_ p: Produced) {
            beforeLast = last
            last = p
        }
        func text(_ range: Range<Int>) -> String? {
            String(validating: UnsafeRawBufferPointer(rebasing: input[range]), as: UTF8.self)
        }

        while true {
            if reader.isAtEnd {
                listing.error = PickleError(.truncated, "pickle ends without STOP", at: reader.position)
                return listing
            }
            opcodes += 1
            if opcodes > limits.maximumOpcodes {
                listing.error = PickleError(.limitExceeded, "more than \(limits.maximumOpcodes) opcodes", at: reader.position)
                return listing
            }
            let instruction: PickleInstruction
            do throws(PickleError) {
                instruction = try reader.next()
            } catch {
                listing.error = error
                return listing
            }
            let op = instruction.opcode
            switch (op, instruction.argument) {
            case (.stop, _):
                listing.endOffset = reader.position
                return listing
            case (.proto, .integer(let v)):
                listing.protocolVersion = v
            case (.frame, _), (.put, _), (.binPut, _), (.longBinPut, _), (.memoize, _):
                break
            case (.global, .lines(let m, let n)), (.inst, .lines(let m, let n)):
                let module = text(m) ?? "unknown"
                let name = text(n) ?? "unknown"
                listing.globals.append(PickleGlobalReference(
                    module: module, name: name, offset: instruction.offset, opcode: op,
                    isResolved: module != "unknown" || name != "unknown"))
                produce(.other)
            case (.stackGlobal, _):
                if case .string(let module) = beforeLast, case .string(let name) = last {
                    listing.globals.append(PickleGlobalReference(module: module, name: name, offset: instruction.offset, opcode: op))
                } else {
                    listing.globals.append(PickleGlobalReference(
                        module: "unknown", name: "unknown", offset: instruction.offset, opcode: op, isResolved: false))
                }
                produce(.other)
            case (.ext1, .integer(let code)), (.ext2, .integer(let code)), (.ext4, .integer(let code)):
                listing.globals.append(PickleGlobalReference(
                    module: "copyreg", name: "extension \(code)", offset: instruction.offset, opcode: op, isResolved: false))
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
                produce(text(r).flatMap { Int($0) }.flatMap { memo[$0] } ?? .other)
            case (.binGet, .integer(let i)), (.longBinGet, .integer(let i)):
                produce(memo[i] ?? .other)
            default:
                produce(.other)
            }
            // Memo stores record what is on top of the stack now.
            switch (op, instruction.argument) {
            case (.put, .bytes(let r)):
                if let i = text(r).flatMap({ Int($0) }) { store(i, last) }
            case (.binPut, .integer(let i)), (.longBinPut, .integer(let i)):
                store(i, last)
            case (.memoize, _):
                store(memo.count, last)
            default:
                break
            }
        }

        func store(_ index: Int, _ value: Produced) {
            if memo[index] == nil, memo.count >= limits.maximumMemoEntries { return }
            memo[index] = value
        }
    }

    /// Walks one pickle held in an array.
    public static func scan(_ bytes: [UInt8], from start: Int = 0, limits: PickleLimits = .default) -> PickleGlobalListing {
        bytes.withUnsafeBytes { scan($0, from: start, limits: limits) }
    }
}
