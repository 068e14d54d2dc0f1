/// Integer literals read the way CPython reads them, so the scanner and the machine see the
/// same numbers the unpickler torch uses does.
///
/// The text opcodes `GET` and `PUT` give their memo index as a line of text. CPython's C
/// unpickler (`_pickle.c` `load_get`/`load_put`, what `torch.load` runs) passes that line,
/// newline included, to `PyLong_FromString(s, NULL, 10)`, which reads a C string: it stops at
/// the first NUL byte, skips ASCII whitespace on both sides, takes an optional sign, and accepts
/// decimal digits with single underscores between them. So `0`, `00`, ` 0`, `+0`, `-0`, `0_0`,
/// `\t0\r` and `0\0junk` are all index 0 (measured with CPython 3.11.7's `_pickle`; see
/// Docs/torch-checkpoints.md). The pure-Python unpickler (`int(line)`) accepts the same
/// strings except those with a NUL, so following the C reading covers both.
public enum PythonInteger {
    /// ASCII whitespace as `Py_ISSPACE` sees it: space, `\t`, `\n`, `\v`, `\f`, `\r`.
    public static func isSpace(_ b: UInt8) -> Bool {
        b == 0x20 || (b >= 0x09 && b <= 0x0D)
    }

    /// The value `PyLong_FromString(line, NULL, 10)` gives, or `nil` where CPython raises
    /// (no digits, a bad character, a misplaced underscore) or the value does not fit `Int`
    /// (CPython then raises `OverflowError` converting it to an index).
    /// - Parameter line: the bytes of the line, with or without its newline.
    public static func parseDecimalLine<C: Collection>(_ line: C) -> Int? where C.Element == UInt8 {
        var bytes = Array(line)
        if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
        return parse(bytes, base: 10, allowPrefix: false, isSpace: isSpace)
    }

    /// `int(text, base)` for ASCII text (`base` 8 or 10): surrounding whitespace, an optional
    /// sign, an optional `0o` prefix when `allowPrefix` (base 8), digits with single
    /// underscores between them (and after the prefix). `nil` on error or overflow.
    public static func parse(_ bytes: [UInt8], base: Int, allowPrefix: Bool, isSpace: (UInt8) -> Bool) -> Int? {
        var start = 0
        var end = bytes.count
        while start < end, isSpace(bytes[start]) { start += 1 }
        while end > start, isSpace(bytes[end - 1]) { end -= 1 }
        var negative = false
        if start < end, bytes[start] == 0x2B || bytes[start] == 0x2D {
            negative = bytes[start] == 0x2D
            start += 1
        }
        var underscoreAllowed = false
        if allowPrefix, base == 8, end - start >= 2, bytes[start] == 0x30, bytes[start + 1] == 0x6F || bytes[start + 1] == 0x4F {
            start += 2
            underscoreAllowed = true  // `0o_7` is valid Python
        }
        guard start < end else { return nil }
        var value = 0
        var previousWasUnderscore = false
        var digits = 0
        for i in start..<end {
            let b = bytes[i]
            if b == 0x5F {
                guard underscoreAllowed || digits > 0, !previousWasUnderscore else { return nil }
                previousWasUnderscore = true
                continue
            }
            guard b >= 0x30, b <= 0x39 else { return nil }
            let d = Int(b - 0x30)
            guard d < base else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: base)
            let (s, o2) = negative ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
            guard !o1, !o2 else { return nil }
            value = s
            digits += 1
            previousWasUnderscore = false
        }
        guard digits > 0, !previousWasUnderscore else { return nil }
        return value
    }
}
