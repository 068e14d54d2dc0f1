import DiffusionEngine
import FuzzSupport

/// libFuzzer entry point: one input is a tokenizer folder held in memory, as a `.wpk` records it.
/// Up to the first NUL byte it is `vocab.json`, after it `merges.txt`; an input without a NUL
/// is `tokenizer.json`. A tokenizer that loads must encode a prompt to its fixed length with
/// ids of its own vocabulary; one that does not must fail with an `EngineError` (any other
/// error, a crash or a hang is a finding).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizer(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: data, count: size))
    var files: [String: [UInt8]] = [:]
    if let nul = bytes.firstIndex(of: 0) {
        files["vocab.json"] = Array(bytes[..<nul])
        files["merges.txt"] = Array(bytes[(nul + 1)...])
    } else {
        files["tokenizer.json"] = bytes
    }
    guard let tokenizer = try? CLIPTokenizer(files: files, location: "fuzz") else { return 0 }
    let ids = tokenizer.encode("a photo of an astronaut riding a horse, 4k, détaillé ✨")
    guard ids.count == tokenizer.maximumLength else { fatalError("encoded \(ids.count) ids, not \(tokenizer.maximumLength)") }
    let known = Set(tokenizer.vocabulary.values).union(tokenizer.addedTokens.values)
    for id in ids where !known.contains(id) { fatalError("id \(id) is not in the tokenizer's vocabulary") }
    return 0
}

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzTokenizer_main")
public func fuzzTokenizerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzTokenizer)
}
