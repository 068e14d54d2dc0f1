import CZlib
import Foundation
import StrictJSON

extension CLIPTokenizer {
    /// Loads a tokenizer from a diffusers `tokenizer/` folder: `vocab.json` and `merges.txt`
    /// (transformers 4), or else `tokenizer.json` (transformers 5). The pad token and maximum
    /// length come from `tokenizer_config.json` or `special_tokens_map.json` when present
    /// (`!` there means SD 2.x padding), else `<|endoftext|>` and 77.
    ///
    /// - Throws: ``EngineError`` with `readFailed` or `invalidTokenizer`.
    public convenience init(directory: URL) throws(EngineError) {
        try self.init(
            source: TokenizerFiles(location: directory.path) { (name) throws(EngineError) -> String? in
                let url = directory.appendingPathComponent(name)
                return FileManager.default.fileExists(atPath: url.path) ? try CLIPTokenizer.readText(url) : nil
            })
    }

    /// Loads a tokenizer from the files of a diffusers `tokenizer/` folder held in memory, by
    /// file name (a `.wpk` converted from a diffusers folder records them in its header), read
    /// as ``init(directory:)`` reads the folder; `location` names them in errors.
    ///
    /// - Throws: ``EngineError`` with `invalidTokenizer`.
    public convenience init(files: [String: [UInt8]], location: String) throws(EngineError) {
        try self.init(
            source: TokenizerFiles(location: location) { (name) throws(EngineError) -> String? in
                guard let bytes = files[name] else { return nil }
                let path = location + "/" + name
                guard bytes.count <= CLIPTokenizer.maximumFileSize else {
                    throw EngineError(
                        .invalidTokenizer,
                        "file is \(bytes.count) bytes, more than the \(CLIPTokenizer.maximumFileSize >> 20) MiB a tokenizer file may have",
                        path: path)
                }
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    throw EngineError(.invalidTokenizer, "file is not UTF-8", path: path)
                }
                return text
            })
    }

    /// A tokenizer folder's files, wherever they are: `read` gives a file's text by name, or
    /// `nil` when there is no such file.
    private struct TokenizerFiles {
        let location: String
        let read: (String) throws(EngineError) -> String?

        func path(_ name: String) -> String { location + "/" + name }

        func json(_ name: String) throws(EngineError) -> JSONValue? {
            guard let text = try read(name) else { return nil }
            do { return try JSONParser.parse(text) } catch {
                throw EngineError(.invalidTokenizer, "malformed JSON", path: path(name), underlying: error)
            }
        }
    }

    private convenience init(source: TokenizerFiles) throws(EngineError) {
        let config = try source.json("tokenizer_config.json")
        let specials = try source.json("special_tokens_map.json")
        let padToken =
            Self.tokenString(config?.objectValue?["pad_token"]) ?? Self.tokenString(specials?.objectValue?["pad_token"])
            ?? CLIPTextNormalization.endOfText
        var maximumLength = 77
        if let m = config?.objectValue?["model_max_length"]?.doubleValue, m >= 2, m < 100_000 { maximumLength = Int(m) }

        let vocabulary: [String: Int]
        let merges: [(String, String)]
        if let vocabularyJSON = try source.json("vocab.json"), let mergesText = try source.read("merges.txt") {
            vocabulary = try Self.parseVocabulary(vocabularyJSON, path: source.path("vocab.json"))
            merges = try Self.parseMerges(text: mergesText, path: source.path("merges.txt"))
        } else {
            let path = source.path("tokenizer.json")
            guard let document = try source.json("tokenizer.json") else {
                throw EngineError(.invalidTokenizer, "no vocab.json with merges.txt, and no tokenizer.json", path: source.location)
            }
            guard let model = document.objectValue?["model"]?.objectValue, let vocab = model["vocab"], let list = model["merges"]?.arrayValue
            else {
                throw EngineError(.invalidTokenizer, "tokenizer.json has no BPE model with vocab and merges", path: path)
            }
            vocabulary = try Self.parseVocabulary(vocab, path: path)
            merges = try list.map { (item) throws(EngineError) -> (String, String) in
                if let pair = item.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue { return (a, b) }
                if let line = item.stringValue {
                    let parts = line.split(separator: " ", omittingEmptySubsequences: false)
                    if parts.count == 2 { return (String(parts[0]), String(parts[1])) }
                }
                throw EngineError(.invalidTokenizer, "malformed merge \(item)", path: path)
            }
        }
        do {
            try self.init(vocabulary: vocabulary, merges: merges, padToken: padToken, maximumLength: maximumLength)
        } catch {
            throw EngineError(.invalidTokenizer, error.message, path: source.location)
        }
    }

    /// The tokenizer from the CLIP BPE vocabulary shipped with the package
    /// (`bpe_simple_vocab_16e6.txt.gz` from open-clip-torch, MIT licence), for single-file
    /// checkpoints that carry no tokenizer. The vocabulary is rebuilt from the merges: the 256
    /// byte symbols, the same with `</w>`, each merge joined, then the two special tokens.
    /// Matches OpenCLIP's SimpleTokenizer vocabulary, https://github.com/mlfoundations/open_clip/blob/main/src/open_clip/tokenizer.py
    ///
    /// - Parameter padToken: `<|endoftext|>` for SD 1.x, `!` for SD 2.x.
    public static func bundled(padToken: String = "<|endoftext|>") throws(EngineError) -> CLIPTokenizer {
        let (tokens, merges, path) = try bundledVocabulary()
        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() { vocabulary[t] = i }
        do {
            return try CLIPTokenizer(vocabulary: vocabulary, merges: merges, padToken: padToken)
        } catch {
            throw EngineError(.missingResource, error.message, path: path)
        }
    }

    /// The bundled vocabulary as the files transformers' `CLIPTokenizer.save_pretrained` writes
    /// (`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`), for a
    /// diffusers folder exported from a checkpoint that carries no tokenizer.
    ///
    /// - Parameter padToken: `<|endoftext|>` for CLIP ViT-L (SD 1.x, SDXL's first encoder), `!`
    ///   for the OpenCLIP encoders (SD 2.x, SDXL's second), as their published tokenizers pad.
    public static func bundledFiles(padToken: String = "<|endoftext|>") throws(EngineError) -> [(name: String, bytes: [UInt8])] {
        let (tokens, merges, _) = try bundledVocabulary()
        let vocabulary = JSONValue.object(JSONObject(tokens.enumerated().map { ($1, JSONValue($0)) }))
        var mergesText = "#version: 0.2\n"
        for (a, b) in merges { mergesText += a + " " + b + "\n" }
        let special: JSONValue = [
            "bos_token": .string(CLIPTextNormalization.startOfText), "eos_token": .string(CLIPTextNormalization.endOfText),
            "pad_token": .string(padToken), "unk_token": .string(CLIPTextNormalization.endOfText),
        ]
        var config = special.objectValue!
        config["add_prefix_space"] = false
        config["do_lower_case"] = true
        config["errors"] = "replace"
        config["model_max_length"] = 77
        config["tokenizer_class"] = "CLIPTokenizer"
        return [
            ("vocab.json", Array((vocabulary.serialized(pretty: true) + "\n").utf8)),
            ("merges.txt", Array(mergesText.utf8)),
            ("tokenizer_config.json", Array((JSONValue.object(config).serialized(pretty: true) + "\n").utf8)),
            ("special_tokens_map.json", Array((special.serialized(pretty: true) + "\n").utf8)),
        ]
    }

    /// The bundled vocabulary's tokens in id order and its merges in rank order.
    private static func bundledVocabulary() throws(EngineError) -> (tokens: [String], merges: [(String, String)], path: String) {
        guard
            let url = Bundle.module.url(forResource: "bpe_simple_vocab_16e6.txt", withExtension: "gz", subdirectory: "Resources")
                ?? Bundle.module.url(forResource: "bpe_simple_vocab_16e6.txt", withExtension: "gz")
        else {
            throw EngineError(.missingResource, "the bundled CLIP vocabulary bpe_simple_vocab_16e6.txt.gz is missing")
        }
        let compressed: Data
        do { compressed = try Data(contentsOf: url) } catch {
            throw EngineError(.missingResource, "cannot read the bundled CLIP vocabulary", path: url.path, underlying: error)
        }
        guard let text = String(data: try gunzip(compressed, path: url.path), encoding: .utf8) else {
            throw EngineError(.missingResource, "the bundled CLIP vocabulary is not UTF-8", path: url.path)
        }
        // The first line is a header (in this file, gzip's name run into `#version: 0.2`); the
        // merges follow, and only the first `mergeLimit` are CLIP's.
        let body = text.firstIndex(of: "\n").map { text[text.index(after: $0)...] } ?? ""
        let merges = try parseMerges(text: String(body), path: url.path, limit: mergeLimit)
        guard merges.count >= mergeLimit else {
            throw EngineError(.missingResource, "the bundled CLIP vocabulary has \(merges.count) merges, expected \(mergeLimit)", path: url.path)
        }
        var tokens = ByteLevel.vocabularyOrder.map { String(ByteLevel.characters[$0]) }
        tokens += tokens.map { $0 + "</w>" }
        tokens += merges.prefix(mergeLimit).map { $0.0 + $0.1 }
        tokens += [CLIPTextNormalization.startOfText, CLIPTextNormalization.endOfText]
        return (tokens, Array(merges.prefix(mergeLimit)), url.path)
    }

    // MARK: File helpers

    private static func tokenString(_ value: JSONValue?) -> String? {
        if let s = value?.stringValue { return s }
        return value?.objectValue?["content"]?.stringValue
    }

    /// The largest tokenizer file read (`tokenizer.json` of CLIP is 2 MB, `vocab.json` 1 MB).
    public static let maximumFileSize = 64 << 20

    private static func readText(_ url: URL) throws(EngineError) -> String {
        // Refuse a FIFO, socket or device before opening it (opening a FIFO blocks), and a
        // file too large to be a tokenizer before reading it.
        var info = stat()
        guard stat(url.path, &info) == 0 else {
            throw EngineError(.readFailed, "cannot read file (\(String(cString: strerror(errno))))", path: url.path)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw EngineError(.readFailed, "not a regular file", path: url.path)
        }
        guard Int(info.st_size) <= maximumFileSize else {
            throw EngineError(
                .invalidTokenizer,
                "file is \(info.st_size) bytes, more than the \(CLIPTokenizer.maximumFileSize >> 20) MiB a tokenizer file may have",
                path: url.path)
        }
        do {
            let data = try Data(contentsOf: url)
            guard let text = String(data: data, encoding: .utf8) else {
                throw EngineError(.invalidTokenizer, "file is not UTF-8", path: url.path)
            }
            return text
        } catch let error as EngineError {
            throw error
        } catch {
            throw EngineError(.readFailed, "cannot read file", path: url.path, underlying: error)
        }
    }

    private static func parseVocabulary(_ value: JSONValue, path: String) throws(EngineError) -> [String: Int] {
        guard let object = value.objectValue else {
            throw EngineError(.invalidTokenizer, "vocabulary is not a JSON object", path: path)
        }
        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(object.count)
        for (token, id) in object.entries {
            guard let id = id.nonNegativeInt else {
                throw EngineError(.invalidTokenizer, "vocabulary id of '\(token)' is not a non-negative integer", path: path)
            }
            vocabulary[token] = id
        }
        return vocabulary
    }

    /// Merges from `merges.txt` text: an optional `#version` line, then `a b` per line.
    static func parseMerges(text: String, path: String, limit: Int = .max) throws(EngineError) -> [(String, String)] {
        var merges: [(String, String)] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if merges.count == limit { break }
            let line = line.hasSuffix("\r") ? line.dropLast() : line
            if line.isEmpty || (n == 0 && line.hasPrefix("#version")) { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw EngineError(.invalidTokenizer, "merges line \(n + 1) is not two symbols", path: path)
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        return merges
    }

    /// Inflates gzip data with zlib.
    static func gunzip(_ data: Data, path: String) throws(EngineError) -> Data {
        var stream = z_stream()
        guard inflateInit2_(&stream, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw EngineError(.missingResource, "zlib cannot start inflating", path: path)
        }
        defer { inflateEnd(&stream) }
        var output = Data()
        let chunk = 1 << 20
        var buffer = [UInt8](repeating: 0, count: chunk)
        var status: Int32 = Z_OK
        data.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            repeat {
                buffer.withUnsafeMutableBufferPointer { out in
                    stream.next_out = out.baseAddress
                    stream.avail_out = uInt(chunk)
                    status = inflate(&stream, Z_NO_FLUSH)
                    output.append(out.baseAddress!, count: chunk - Int(stream.avail_out))
                }
            } while status == Z_OK
        }
        guard status == Z_STREAM_END else {
            throw EngineError(.missingResource, "corrupt gzip data (zlib status \(status))", path: path)
        }
        return output
    }
}
