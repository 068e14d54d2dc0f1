import Foundation

/// The text clean-up and pre-tokenisation of CLIP's tokenizer as transformers 5 runs it
/// (`tokenizer.json`: NFC, whitespace runs to one space, lower-case, then CLIP's split pattern).
/// Matches transformers' CLIPTokenizer / tokenizers pipeline, https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/tokenization_clip.py
enum CLIPTextNormalization {
    /// The special tokens recognised in raw text before any normalisation.
    static let startOfText = "<|startoftext|>"
    static let endOfText = "<|endoftext|>"

    /// NFC, each run of white space (Unicode `White_Space`) to one space, and lower-casing
    /// with Unicode's full mappings (final sigma included, as Rust's `to_lowercase` does).
    static func normalize(_ text: String) -> String {
        let composed = text.precomposedStringWithCanonicalMapping
        var folded: [Unicode.Scalar] = []
        folded.reserveCapacity(composed.unicodeScalars.count)
        var inSpace = false
        for s in composed.unicodeScalars {
            if s.properties.isWhitespace {
                if !inSpace { folded.append(" ") }
                inSpace = true
            } else {
                folded.append(s)
                inSpace = false
            }
        }
        return lowercase(folded)
    }

    private static func lowercase(_ scalars: [Unicode.Scalar]) -> String {
        var out = String.UnicodeScalarView()
        for (i, s) in scalars.enumerated() {
            if s == "\u{03A3}" {
                out.append(isWordFinal(scalars, at: i) ? "\u{03C2}" : "\u{03C3}")
                continue
            }
            let mapped = s.properties.lowercaseMapping
            out.append(contentsOf: mapped.unicodeScalars)
        }
        return String(out)
    }

    /// Unicode's Final_Sigma condition: a cased letter before (skipping case-ignorables) and
    /// none after.
    private static func isWordFinal(_ scalars: [Unicode.Scalar], at index: Int) -> Bool {
        var before = false
        var j = index - 1
        while j >= 0 {
            let p = scalars[j].properties
            if p.isCaseIgnorable { j -= 1; continue }
            before = p.isCased
            break
        }
        guard before else { return false }
        j = index + 1
        while j < scalars.count {
            let p = scalars[j].properties
            if p.isCaseIgnorable { j += 1; continue }
            return !p.isCased
        }
        return true
    }

    private enum Class { case letter, number, space, other }

    private static func classify(_ s: Unicode.Scalar) -> Class {
        if s.properties.isWhitespace { return .space }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    private static let contractions: [[Unicode.Scalar]] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"].map { Array($0.unicodeScalars) }
    private static let specials: [[Unicode.Scalar]] = [startOfText, endOfText].map { Array($0.unicodeScalars) }

    /// Splits normalised text into the words BPE works on, by CLIP's pattern
    /// `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
    /// (leftmost alternative first, white space dropped). A special-token literal found here
    /// is split again as the byte-level step's GPT-2 pattern splits it (`<|`, name, `|>`).
    static func preTokenize(_ text: String) -> [String] {
        let s = Array(text.unicodeScalars)
        var words: [String] = []
        var i = 0
        func starts(with pattern: [Unicode.Scalar], at i: Int) -> Bool {
            guard i + pattern.count <= s.count else { return false }
            for k in 0..<pattern.count where s[i + k] != pattern[k] { return false }
            return true
        }
        func word(_ range: Range<Int>) -> String {
            var v = String.UnicodeScalarView()
            v.append(contentsOf: s[range])
            return String(v)
        }
        scan: while i < s.count {
            for special in specials where starts(with: special, at: i) {
                words.append("<|")
                words.append(word((i + 2)..<(i + special.count - 2)))
                words.append("|>")
                i += special.count
                continue scan
            }
            for c in contractions where starts(with: c, at: i) {
                words.append(word(i..<(i + c.count)))
                i += c.count
                continue scan
            }
            let kind = classify(s[i])
            switch kind {
            case .space:
                i += 1
            case .number:
                words.append(word(i..<(i + 1)))
                i += 1
            case .letter, .other:
                var j = i + 1
                while j < s.count, classify(s[j]) == kind { j += 1 }
                words.append(word(i..<j))
                i = j
            }
        }
        return words
    }
}
