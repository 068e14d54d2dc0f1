/// The reversible byte-to-character table of byte-level BPE: printable Latin-1 bytes stand
/// for themselves and the other 68 bytes for U+0100 upwards, in byte order.
/// Matches `bytes_to_unicode` in OpenAI CLIP, https://github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py
enum ByteLevel {
    /// The character standing for each byte value.
    static let characters: [Character] = {
        var table = [Character](repeating: " ", count: 256)
        var extra: UInt32 = 0
        for b in 0..<256 {
            if isPrintable(b) {
                table[b] = Character(Unicode.Scalar(UInt32(b))!)
            } else {
                table[b] = Character(Unicode.Scalar(256 + extra)!)
                extra += 1
            }
        }
        return table
    }()

    /// The byte values in the order CLIP's vocabulary lists their characters: the printable
    /// bytes ascending, then the others ascending.
    static let vocabularyOrder: [Int] = (0..<256).filter(isPrintable) + (0..<256).filter { !isPrintable($0) }

    private static func isPrintable(_ b: Int) -> Bool {
        (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
    }
}
