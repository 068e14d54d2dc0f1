import Foundation

/// CLIP's byte-level BPE tokenizer, producing the ids transformers' `CLIPTokenizer` produces
/// for Stable Diffusion: `<|startoftext|>`, the prompt's tokens truncated to fit, `<|endoftext|>`,
/// then padding to 77 with the pad token (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
/// Matches transformers' CLIPTokenizer (tokenizers backend), https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/tokenization_clip.py
///
/// Thread-safe: the BPE cache is behind a lock.
public final class CLIPTokenizer: @unchecked Sendable {
    /// The maximum merges CLIP uses (49152 - 256 - 2), as transformers and OpenCLIP cap them.
    public static let mergeLimit = 48_894

    /// Token string to id.
    public let vocabulary: [String: Int]
    /// Id of `<|startoftext|>`.
    public let startTokenID: Int
    /// Id of `<|endoftext|>`.
    public let endTokenID: Int
    /// Id written after the end token up to ``maximumLength``.
    public let padTokenID: Int
    /// Length of a padded sequence, start and end tokens included (77 for CLIP).
    public let maximumLength: Int

    /// Merge of two symbol ids: its rank (lower merges first) and the id of the result.
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    /// Vocabulary id of each byte's symbol, alone and with the `</w>` word-end suffix.
    private let byteIDs: [Int32]
    private let byteEndIDs: [Int32]
    private var cache: [String: [Int32]] = [:]
    private let lock = NSLock()
    /// Tokens recognised literally in raw text before normalisation (transformers' special
    /// tokens): start, end, and the pad token. With SD 2.x's pad token `!`, every `!` in a
    /// prompt becomes its own token, as transformers does.
    private let specialTokens: [(text: String, id: Int)]

    /// Creates a tokenizer from a vocabulary and merges.
    ///
    /// - Parameters:
    ///   - vocabulary: token string to id; must hold every byte symbol, with and without
    ///     `</w>`, the two special tokens and every merge result.
    ///   - merges: symbol pairs in priority order (only the first ``mergeLimit`` are used).
    ///   - padToken: the token padding uses (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
    ///   - maximumLength: padded length, start and end tokens included.
    /// - Throws: ``EngineError/Code/invalidTokenizer`` when the pieces do not fit together.
    public init(vocabulary: [String: Int], merges: [(String, String)], padToken: String = "<|endoftext|>", maximumLength: Int = 77) throws(EngineError) {
        func id(_ token: String) throws(EngineError) -> Int {
            guard let id = vocabulary[token] else {
                throw EngineError(.invalidTokenizer, "token '\(token)' is not in the vocabulary")
            }
            return id
        }
        guard maximumLength >= 2 else {
            throw EngineError(.invalidTokenizer, "maximum length \(maximumLength) leaves no room for the start and end tokens")
        }
        self.vocabulary = vocabulary
        startTokenID = try id(CLIPTextNormalization.startOfText)
        endTokenID = try id(CLIPTextNormalization.endOfText)
        padTokenID = try id(padToken)
        var specials = [(CLIPTextNormalization.startOfText, startTokenID), (CLIPTextNormalization.endOfText, endTokenID)]
        if !padToken.isEmpty, !specials.contains(where: { $0.0 == padToken }) { specials.append((padToken, padTokenID)) }
        specialTokens = specials
        self.maximumLength = maximumLength
        var byteIDs: [Int32] = [], byteEndIDs: [Int32] = []
        for b in 0..<256 {
            let c = String(ByteLevel.characters[b])
            byteIDs.append(Int32(try id(c)))
            byteEndIDs.append(Int32(try id(c + "</w>")))
        }
        self.byteIDs = byteIDs
        self.byteEndIDs = byteEndIDs
        var table: [UInt64: (rank: Int32, id: Int32)] = [:]
        table.reserveCapacity(min(merges.count, Self.mergeLimit))
        for (rank, (a, b)) in merges.prefix(Self.mergeLimit).enumerated() {
            let key = Self.pairKey(Int32(try id(a)), Int32(try id(b)))
            if table[key] == nil { table[key] = (Int32(rank), Int32(try id(a + b))) }
        }
        self.merges = table
    }

    @inline(__always)
    private static func pairKey(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    // MARK: Encoding

    /// The ids of `text` as Stable Diffusion feeds them to the text encoder: start token,
    /// tokens truncated to `maximumLength - 2`, end token, padding to ``maximumLength``.
    ///
    /// - Parameter padTokenID: overrides the tokenizer's pad id (0 gives OpenCLIP's padding).
    /// - Complexity: linear in the text for cached words; BPE is quadratic in a word's length.
    public func encode(_ text: String, padTokenID: Int? = nil) -> [Int] {
        var ids = [startTokenID]
        ids.append(contentsOf: tokenize(text).prefix(maximumLength - 2))
        ids.append(endTokenID)
        ids.append(contentsOf: repeatElement(padTokenID ?? self.padTokenID, count: maximumLength - ids.count))
        return ids
    }

    /// The ids of `text` without start, end or padding tokens and without truncation.
    /// Literal special tokens in the text (`<|startoftext|>`, `<|endoftext|>`, the pad token)
    /// become their ids.
    public func tokenize(_ text: String) -> [Int] {
        var ids: [Int] = []
        for segment in splitSpecialTokens(text) {
            switch segment {
            case .special(let id):
                ids.append(id)
            case .text(let chunk):
                for word in CLIPTextNormalization.preTokenize(CLIPTextNormalization.normalize(chunk)) {
                    ids.append(contentsOf: bpe(word).lazy.map(Int.init))
                }
            }
        }
        return ids
    }

    /// The token strings of `ids` (for display).
    public func tokens(_ ids: [Int]) -> [String] {
        lock.lock()
        if inverse.isEmpty {
            var table = [String](repeating: "", count: (vocabulary.values.max() ?? -1) + 1)
            for (token, id) in vocabulary { table[id] = token }
            inverse = table
        }
        let table = inverse
        lock.unlock()
        return ids.map { $0 >= 0 && $0 < table.count ? table[$0] : "<\($0)>" }
    }
    private var inverse: [String] = []

    private enum Segment { case text(String), special(Int) }

    /// Splits raw text at special-token literals: leftmost match first, the longest on a tie.
    /// Matching is on Unicode scalars, not grapheme clusters (`!` followed by a combining mark
    /// still matches).
    private func splitSpecialTokens(_ text: String) -> [Segment] {
        let scalars = Array(text.unicodeScalars)
        let patterns = specialTokens.map { (Array($0.text.unicodeScalars), $0.id) }
        var segments: [Segment] = []
        var start = 0, i = 0
        func flush(_ end: Int) {
            if end > start {
                var v = String.UnicodeScalarView()
                v.append(contentsOf: scalars[start..<end])
                segments.append(.text(String(v)))
            }
        }
        while i < scalars.count {
            var best: (length: Int, id: Int)? = nil
            for (pattern, id) in patterns where pattern.count > (best?.length ?? 0) && i + pattern.count <= scalars.count {
                if scalars[i..<(i + pattern.count)].elementsEqual(pattern) { best = (pattern.count, id) }
            }
            if let best {
                flush(i)
                segments.append(.special(best.id))
                i += best.length
                start = i
            } else {
                i += 1
            }
        }
        flush(scalars.count)
        return segments
    }

    /// Byte-level BPE of one pre-tokenised word, the last symbol carrying `</w>`.
    private func bpe(_ word: String) -> [Int32] {
        lock.lock()
        if let hit = cache[word] { lock.unlock(); return hit }
        lock.unlock()
        let bytes = Array(word.utf8)
        guard !bytes.isEmpty else { return [] }
        var symbols = bytes.enumerated().map { i, b in i == bytes.count - 1 ? byteEndIDs[Int(b)] : byteIDs[Int(b)] }
        while symbols.count > 1 {
            // The lowest-ranked adjacent pair, then all its occurrences left to right.
            var best: (rank: Int32, id: Int32)? = nil
            var bestPair: (Int32, Int32) = (0, 0)
            for i in 0..<(symbols.count - 1) {
                if let m = merges[Self.pairKey(symbols[i], symbols[i + 1])], best == nil || m.rank < best!.rank {
                    best = m
                    bestPair = (symbols[i], symbols[i + 1])
                }
            }
            guard let merge = best else { break }
            var merged: [Int32] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count, symbols[i] == bestPair.0, symbols[i + 1] == bestPair.1 {
                    merged.append(merge.id)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        lock.lock()
        if cache.count < 100_000 { cache[word] = symbols }
        lock.unlock()
        return symbols
    }
}
