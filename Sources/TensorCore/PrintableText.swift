/// Names and paths made safe to print: a tensor name, a file name or a metadata key comes from a
/// file and may hold a newline or a terminal escape sequence, which must not reach a terminal
/// raw (it could forge lines of a report or reprogram the terminal).
public enum PrintableText {
    /// `text` with every character a terminal would act on written as an escape: `\n`, `\r`,
    /// `\t`, other C0 controls, DEL and C1 controls as `\xNN` (ESC is `\x1b`), line and
    /// paragraph separators and bidirectional overrides as `\u{NNNN}`, and the backslash itself
    /// as `\\`, so the result is unambiguous. Text without any of them is returned unchanged.
    ///
    /// - Complexity: O(n).
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            append(scalar, to: &out)
        }
        return out
    }

    /// Bytes that should be UTF-8 (a name as a file stores it) made printable: valid UTF-8 as
    /// ``escaped(_:)`` writes it, and every byte that is not part of valid UTF-8 as `\xNN`.
    public static func escaped(bytes: some Collection<UInt8>) -> String {
        let buffer = Array(bytes)
        var out = ""
        var index = 0
        while index < buffer.count {
            let b0 = buffer[index]
            let length: Int
            switch b0 {
            case 0x00...0x7F: length = 1
            case 0xC2...0xDF: length = 2
            case 0xE0...0xEF: length = 3
            case 0xF0...0xF4: length = 4
            default: length = 0
            }
            if length > 0, index + length <= buffer.count {
                var decoder = UTF8()
                var it = buffer[index..<(index + length)].makeIterator()
                if case .scalarValue(let scalar) = decoder.decode(&it), it.next() == nil {
                    append(scalar, to: &out)
                    index += length
                    continue
                }
            }
            out += "\\x" + hex(UInt32(b0), digits: 2)
            index += 1
        }
        return out
    }

    /// Whether `scalar` is written as an escape by ``escaped(_:)``.
    public static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00..<0x20, 0x7F...0x9F, 0x5C: true
        case 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069, 0x200E, 0x200F, 0x061C: true
        default: false
        }
    }

    private static func append(_ scalar: Unicode.Scalar, to out: inout String) {
        switch scalar {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\\": out += "\\\\"
        default:
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
                out += "\\x" + hex(scalar.value, digits: 2)
            } else if needsEscape(scalar) {
                out += "\\u{" + hex(scalar.value, digits: 4) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
