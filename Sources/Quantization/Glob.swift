/// Shell-style name patterns: `*` matches any run of characters (dots included), `?` one
/// character; everything else matches itself. Used by `--keep GLOB`.
public enum Glob {
    /// Whether `name` matches `pattern` as a whole.
    ///
    /// - Complexity: O(pattern · name) in the worst case.
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        let p = Array(pattern.utf8), s = Array(name.utf8)
        var i = 0, j = 0
        var star = -1, mark = 0
        while j < s.count {
            if i < p.count, p[i] == UInt8(ascii: "?") || p[i] == s[j] {
                i += 1; j += 1
            } else if i < p.count, p[i] == UInt8(ascii: "*") {
                star = i; mark = j; i += 1
            } else if star >= 0 {
                i = star + 1; mark += 1; j = mark
            } else {
                return false
            }
        }
        while i < p.count, p[i] == UInt8(ascii: "*") { i += 1 }
        return i == p.count
    }
}
