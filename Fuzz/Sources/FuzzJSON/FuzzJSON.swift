import FuzzSupport
import StrictJSON

/// libFuzzer entry point: one input is a JSON text. A document that parses is written back
/// out and parsed again (the writer's output must be strict JSON the parser accepts and give
/// the same value). The streaming reader runs over the same text, token by token and again
/// skipping the whole value, and must agree with the parser on whether the text is JSON.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let parsed = Result { () throws(JSONError) in try JSONParser.parse(bytes) }
    let streamed = Result { () throws(JSONError) in
        var reader = try JSONReader(bytes)
        while try reader.next() != .end {}
    }
    let skipped = Result { () throws(JSONError) in
        var reader = try JSONReader(bytes)
        try reader.skipValue()
        guard try reader.next() == .end else { throw JSONError(.syntax, "trailing bytes") }
    }
    switch (parsed, streamed, skipped) {
    case (.success(let value), .success, .success):
        let text = value.serialized()
        guard let again = try? JSONParser.parse(text) else { fatalError("the writer's output does not parse: \(text.prefix(200))") }
        // Doubles are written in Swift's shortest round-trip form: the value comes back exactly.
        if again != value { fatalError("round trip changed the value: \(text.prefix(200))") }
    case (.failure(let error), .success, .success) where error.code == .duplicateKey || error.code == .tooLarge:
        break  // the reader leaves duplicate keys to its caller and builds nothing
    case (.failure, .failure, .failure):
        break
    default:
        fatalError("parser and streaming reader disagree: parse \(parsed), stream \(streamed), skip \(skipped)")
    }
    return 0
}

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzJSON_main")
public func fuzzJSONMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzJSON)
}
