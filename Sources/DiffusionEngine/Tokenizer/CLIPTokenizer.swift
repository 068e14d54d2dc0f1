import Foundation

/// CLIP's byte-level BPE tokenizer, producing the ids transformers' `CLIPTokenizer` produces
/// for Stable Diffusion: `<|startoftext|>`, the prompt's tokens truncated to fit, `<|endoftext|>`,
/// then padding to 77 with the pad token (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
/// Matches transformers' CLIPTokenizer (tokenizers backend), https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/tokenization_clip.py
///
/// Thread-safe: the BPE cache is behind a lock.
public final class CLIPTokenizer: @unchecked Sendable {
    /// The maximum merges CLIP uses (49152 - 256 - 2), as transformers and OpenCLIP cap them.
    /// The largest token id a vocabulary may use, plus one: twice the most rows a text encoder
    /// configuration may have (`CLIPTextConfiguration.Limits`), so every id can be embedded.
    public static let maximumTokenID = 2_000_000

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
    /// Tokens added after the vocabulary (``addTokens(_:)``), each with the ids it expands to.
    private var added: [(text: String, ids: [Int])] = []
    private var addedIDs: [String: Int] = [:]

    /// Creates a tokenizer from a vocabulary and merges.
    ///
    /// - Parameters:
    ///   - vocabulary: token string to id; must hold every byte symbol, with and without
    ///     `</w>`, the two special tokens and every merge result.
    ///   - merges: symbol pairs in priority order (only the first ``mergeLimit`` are used).
    ///   - padToken: the token padding uses (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
    ///   - maximumLength: padded length, start and end tokens included.
    /// - Throws: ``EngineError/Code/invalidTokenizer`` when the pieces do not fit together.
    public init(
        vocabulary: [String: Int], merges: [(String, String)], padToken: String = "<|endoftext|>", maximumLength: Int = 77
    ) throws(EngineError) {
        func id(_ token: String) throws(EngineError) -> Int {
            guard let id = vocabulary[token] else {
                throw EngineError(.invalidTokenizer, "token '\(token)' is not in the vocabulary")
            }
            return id
        }
        // Ids are kept as Int32 in the merge table and index the id → token table: one beyond
        // any text encoder's rows (a hostile vocab.json or tokenizer.json) is refused here.
        if let (token, id) = vocabulary.first(where: { $0.value < 0 || $0.value >= Self.maximumTokenID }) {
            throw EngineError(.invalidTokenizer, "token '\(token.prefix(40))' has the id \(id), outside 0..<\(Self.maximumTokenID)")
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
        ids.append(contentsOf: tokenize(text, limit: maximumLength - 2))
        ids.append(endTokenID)
        ids.append(contentsOf: repeatElement(padTokenID ?? self.padTokenID, count: maximumLength - ids.count))
        return ids
    }

    /// The ids of `text` without start, end or padding tokens and without truncation.
    /// Literal special tokens in the text (`<|startoftext|>`, `<|endoftext|>`, the pad token)
    /// become their ids.
    public func tokenize(_ text: String) -> [Int] { tokenize(text, limit: .max) }

    /// The first `limit` ids of ``tokenize(_:)``: words after the limit are not encoded (each
    /// word is encoded on its own, so the prefix is the same).
    public func tokenize(_ text: String, limit: Int) -> [Int] {
        var ids: [Int] = []
        for segment in splitSpecialTokens(text) {
            if ids.count >= limit { break }
            switch segment {
            case .special(let id):
                ids.append(id)
            case .added(let group):
                ids.append(contentsOf: group)
            case .text(let chunk):
                for word in CLIPTextNormalization.preTokenize(CLIPTextNormalization.normalize(chunk)) {
                    if ids.count >= limit { break }
                    ids.append(contentsOf: bpe(word).lazy.map(Int.init))
                }
            }
        }
        return ids.count > limit ? Array(ids.prefix(limit)) : ids
    }

    /// The token strings of `ids` (for display).
    public func tokens(_ ids: [Int]) -> [String] {
        lock.lock()
        if inverse.isEmpty {
            var table = [String](repeating: "", count: (vocabulary.values.max() ?? -1) + 1)
            for (token, id) in vocabulary { table[id] = token }
            inverse = table
        }
        var table = inverse
        for (token, id) in addedIDs {
            if id >= table.count { table.append(contentsOf: repeatElement("", count: id - table.count + 1)) }
            table[id] = token
        }
        lock.unlock()
        return ids.map { $0 >= 0 && $0 < table.count ? table[$0] : "<\($0)>" }
    }
    private var inverse: [String] = []

    private enum Segment { case text(String), special(Int), added([Int]) }

    // MARK: Added tokens

    /// Tokens added after the vocabulary (textual-inversion tokens), token → id.
    public var addedTokens: [String: Int] {
        lock.lock()
        defer { lock.unlock() }
        return addedIDs
    }

    /// The id the next added token gets: one past the vocabulary and every token added so far
    /// (transformers' `len(tokenizer)`).
    public var nextTokenID: Int {
        lock.lock()
        defer { lock.unlock() }
        return max((vocabulary.values.max() ?? -1) + 1, (addedIDs.values.max() ?? -1) + 1)
    }

    /// Adds `tokens` after the vocabulary, as transformers' `add_tokens` does for diffusers'
    /// `load_textual_inversion` (`<tok>`, `<tok>_1`, … for a multi-vector embedding), and
    /// returns their ids (consecutive, from ``nextTokenID``).
    ///
    /// Added tokens are matched literally in a prompt before normalisation, as special tokens
    /// are (leftmost, the longest on a tie). The first token stands for the whole group: it
    /// becomes all the group's ids, as diffusers' `maybe_convert_prompt` rewrites `<tok>` to
    /// `<tok> <tok>_1 …` before tokenising; each other token becomes its own id.
    /// Matches https://github.com/huggingface/diffusers/blob/main/src/diffusers/loaders/textual_inversion.py
    ///
    /// - Throws: ``EngineError/Code/invalidTokenizer`` for an empty token, or one already in the
    ///   vocabulary or added (diffusers refuses those too).
    @discardableResult
    public func addTokens(_ tokens: [String]) throws(EngineError) -> [Int] {
        guard !tokens.isEmpty else { throw EngineError(.invalidTokenizer, "no tokens to add") }
        let first = nextTokenID
        lock.lock()
        defer { lock.unlock() }
        var seen = Set<String>()
        for t in tokens {
            guard !t.isEmpty, !t.unicodeScalars.allSatisfy(\.properties.isWhitespace) else {
                throw EngineError(.invalidTokenizer, "an added token must not be empty or blank")
            }
            guard vocabulary[t] == nil, addedIDs[t] == nil, seen.insert(t).inserted else {
                throw EngineError(.invalidTokenizer, "token '\(t)' is already in the tokenizer's vocabulary; choose another name (--token)")
            }
        }
        let ids = tokens.indices.map { first + $0 }
        for (t, id) in zip(tokens, ids) { addedIDs[t] = id }
        added.append((tokens[0], ids))
        for (t, id) in zip(tokens.dropFirst(), ids.dropFirst()) { added.append((t, [id])) }
        inverse = []
        return ids
    }

    /// Splits raw text at special-token literals: leftmost match first, the longest on a tie.
    /// Matching is on Unicode scalars, not grapheme clusters (`!` followed by a combining mark
    /// still matches).
    private func splitSpecialTokens(_ text: String) -> [Segment] {
        let scalars = Array(text.unicodeScalars)
        lock.lock()
        let extra = added
        lock.unlock()
        let patterns =
            specialTokens.map { (Array($0.text.unicodeScalars), Segment.special($0.id)) }
            + extra.map { (Array($0.text.unicodeScalars), Segment.added($0.ids)) }
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
            var best: (length: Int, segment: Segment)? = nil
            for (pattern, segment) in patterns where pattern.count > (best?.length ?? 0) && i + pattern.count <= scalars.count {
                if scalars[i..<(i + pattern.count)].elementsEqual(pattern) { best = (pattern.count, segment) }
            }
            if let best {
                flush(i)
                segments.append(best.segment)
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
    ///
    /// The reference algorithm (transformers' `CLIPTokenizer.bpe`): repeatedly take the
    /// lowest-ranked adjacent pair and merge all its occurrences left to right in one pass.
    /// Run here on a linked list with a heap of candidate pairs, so a word of n bytes costs
    /// O(n log n), not O(n²) (a 130 KB word took 13 s); the merges made and their order are the
    /// reference's: each pass gathers the occurrences present when it starts, in order, and pairs
    /// a merge creates wait for a later pass.
    private func bpe(_ word: String) -> [Int32] {
        lock.lock()
        if let hit = cache[word] { lock.unlock(); return hit }
        lock.unlock()
        let bytes = Array(word.utf8)
        guard !bytes.isEmpty else { return [] }
        var symbols = bytes.enumerated().map { i, b in i == bytes.count - 1 ? byteEndIDs[Int(b)] : byteIDs[Int(b)] }
        let n = symbols.count
        if n > 1 {
            var next = (0..<n).map { Int32($0 + 1) }
            next[n - 1] = -1
            var prev = (0..<n).map { Int32($0 - 1) }
            var alive = [Bool](repeating: true, count: n)
            var heap = PairHeap()
            func rank(at p: Int32) -> Int32? {
                let q = next[Int(p)]
                guard q >= 0 else { return nil }
                return merges[Self.pairKey(symbols[Int(p)], symbols[Int(q)])]?.rank
            }
            for p in 0..<Int32(n - 1) { if let r = rank(at: p) { heap.push(rank: r, position: p) } }
            var positions: [Int32] = []
            while let top = heap.peek {
                let r = top.rank
                positions.removeAll(keepingCapacity: true)
                while let entry = heap.peek, entry.rank == r {
                    heap.pop()
                    let p = entry.position
                    if alive[Int(p)], rank(at: p) == r, positions.last != p { positions.append(p) }
                }
                guard let first = positions.first, let mergedID = merges[Self.pairKey(symbols[Int(first)], symbols[Int(next[Int(first)])])]?.id else {
                    continue
                }
                for p in positions where alive[Int(p)] {
                    let q = Int(next[Int(p)])
                    symbols[Int(p)] = mergedID
                    alive[q] = false
                    next[Int(p)] = next[q]
                    if next[q] >= 0 { prev[Int(next[q])] = p }
                    let before = prev[Int(p)]
                    if before >= 0, let rb = rank(at: before) { heap.push(rank: rb, position: before) }
                    if let ra = rank(at: p) { heap.push(rank: ra, position: p) }
                }
            }
            var out: [Int32] = []
            var p: Int32 = 0
            while p >= 0 {
                out.append(symbols[Int(p)])
                p = next[Int(p)]
            }
            symbols = out
        }
        lock.lock()
        // Long words are rare and would make the cache large; they are not kept.
        if cache.count < 100_000, bytes.count <= 256 { cache[word] = symbols }
        lock.unlock()
        return symbols
    }
}

/// A binary min-heap of (rank, position) pairs packed in a `UInt64`, ordered by rank, then position.
private struct PairHeap {
    private var items: [UInt64] = []

    var peek: (rank: Int32, position: Int32)? {
        items.first.map { (Int32(bitPattern: UInt32(truncatingIfNeeded: $0 >> 32)), Int32(bitPattern: UInt32(truncatingIfNeeded: $0))) }
    }

    mutating func push(rank: Int32, position: Int32) {
        items.append(UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: position)))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i] < items[parent] else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count, items[l] < items[m] { m = l }
            if r < items.count, items[r] < items[m] { m = r }
            guard m != i else { return }
            items.swapAt(i, m)
            i = m
        }
    }
}
