import Foundation
import StrictJSON
import TestSupport
import Testing

@testable import DiffusionEngine

/// One golden case of `Fixtures/golden/tokenizer_cases.json` (made by transformers' CLIPTokenizer).
struct TokenizerCase: CustomTestStringConvertible, Sendable {
    var name: String
    var prompt: String
    var ids: [Int]
    var idsPad0: [Int]
    var idsOpenCLIP: [Int]?
    var testDescription: String { name }

    static let all: [TokenizerCase] = {
        let url = Fixture.golden.appendingPathComponent("tokenizer_cases.json")
        guard let text = try? String(contentsOf: url, encoding: .utf8), let json = try? JSONParser.parse(text),
            let cases = json.arrayValue
        else { return [] }
        return cases.compactMap { c in
            guard let o = c.objectValue, let prompt = o["prompt"]?.stringValue,
                let ids = o["ids"]?.arrayValue?.compactMap(\.intValue),
                let pad0 = o["ids_pad0"]?.arrayValue?.compactMap(\.intValue)
            else { return nil }
            let openCLIP = o["open_clip_agrees"]?.boolValue == true ? o["ids_open_clip"]?.arrayValue?.compactMap(\.intValue) : nil
            return TokenizerCase(name: o["name"]?.stringValue ?? prompt, prompt: prompt, ids: ids, idsPad0: pad0, idsOpenCLIP: openCLIP)
        }
    }()
}

@Suite("CLIP tokenizer")
struct CLIPTokenizerTests {
    static let folder = try! CLIPTokenizer(directory: Fixture.diffusers.appendingPathComponent("tokenizer"))
    static let bundled = try! CLIPTokenizer.bundled()
    /// SD 2.x's configuration: `!` (id 0) is the pad token.
    static let sd2 = try! CLIPTokenizer.bundled(padToken: "!")

    @Test func goldenCasesAreLoaded() {
        #expect(TokenizerCase.all.count >= 20)
    }

    @Test("folder vocabulary matches transformers", arguments: TokenizerCase.all)
    func folderMatchesGolden(_ c: TokenizerCase) {
        #expect(Self.folder.encode(c.prompt) == c.ids)
    }

    @Test("pad token '!' matches transformers with SD 2.x's tokenizer configuration", arguments: TokenizerCase.all)
    func sd2MatchesGolden(_ c: TokenizerCase) {
        #expect(Self.sd2.encode(c.prompt) == c.idsPad0)
    }

    @Test("zero padding matches OpenCLIP where OpenCLIP agrees with transformers", arguments: TokenizerCase.all.filter { $0.idsOpenCLIP != nil })
    func openCLIPPadding(_ c: TokenizerCase) {
        #expect(Self.bundled.encode(c.prompt, padTokenID: 0) == c.idsOpenCLIP)
    }

    @Test("bundled vocabulary matches transformers", arguments: TokenizerCase.all)
    func bundledMatchesGolden(_ c: TokenizerCase) {
        #expect(Self.bundled.encode(c.prompt) == c.ids)
    }

    @Test func bundledVocabularyEqualsFolderVocabulary() {
        #expect(Self.bundled.vocabulary == Self.folder.vocabulary)
        #expect(Self.bundled.vocabulary.count == 49408)
    }

    @Test func tokenizerJSONAloneGivesTheSameIDs() throws {
        // Only tokenizer.json and tokenizer_config.json, as transformers 5 saves a folder.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wpk-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: Fixture.diffusers.appendingPathComponent("tokenizer/" + name), to: dir.appendingPathComponent(name))
        }
        let tokenizer = try CLIPTokenizer(directory: dir)
        for c in TokenizerCase.all { #expect(tokenizer.encode(c.prompt) == c.ids, "\(c.name)") }
    }

    @Test func sd2PaddingFromConfiguration() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wpk-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for name in ["vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(at: Fixture.diffusers.appendingPathComponent("tokenizer/" + name), to: dir.appendingPathComponent(name))
        }
        try #"{"pad_token": {"content": "!", "lstrip": false}, "model_max_length": 77}"#.write(
            to: dir.appendingPathComponent("tokenizer_config.json"), atomically: true, encoding: .utf8)
        let tokenizer = try CLIPTokenizer(directory: dir)
        #expect(tokenizer.padTokenID == 0)
        #expect(tokenizer.encode("a cat") == [49406, 320, 2368, 49407] + Array(repeating: 0, count: 73))
    }

    @Test func truncatesTo77WithEndToken() {
        let ids = Self.folder.encode(String(repeating: "cat ", count: 100))
        #expect(ids.count == 77)
        #expect(ids.first == 49406 && ids.last == 49407)
    }

    @Test func malformedMergesAreRejected() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wpk-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try #"{"a": 0}"#.write(to: dir.appendingPathComponent("vocab.json"), atomically: true, encoding: .utf8)
        try "#version: 0.2\na b c\n".write(to: dir.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
        let error = #expect(throws: EngineError.self) { try CLIPTokenizer(directory: dir) }
        #expect(error?.code == .invalidTokenizer)
    }

    /// A `.wpk` records a diffusers folder's tokenizer files in its header; read from there they
    /// give the folder's tokenizer: the same ids for every golden case, with either file set.
    @Test(arguments: [["vocab.json", "merges.txt", "tokenizer_config.json"], ["tokenizer.json", "tokenizer_config.json"]])
    func filesHeldInMemoryGiveTheFoldersTokenizer(_ names: [String]) throws {
        var files: [String: [UInt8]] = [:]
        for name in names {
            files[name] = Array(try Data(contentsOf: Fixture.diffusers.appendingPathComponent("tokenizer/" + name)))
        }
        let tokenizer = try CLIPTokenizer(files: files, location: "test: tokenizer")
        #expect(tokenizer.vocabulary == Self.folder.vocabulary)
        for c in TokenizerCase.all { #expect(tokenizer.encode(c.prompt) == c.ids, "\(c.name)") }
    }

    /// Hostile or broken recorded files: refused with `invalidTokenizer`, naming the file.
    @Test(arguments: [
        ("no files", [String: String](), "no vocab.json with merges.txt, and no tokenizer.json"),
        ("vocab without merges, no tokenizer.json", ["vocab.json": #"{"a": 0}"#], "no vocab.json with merges.txt"),
        ("malformed vocabulary", ["vocab.json": "{", "merges.txt": ""], "test: tokenizer/vocab.json"),
        ("negative id", ["vocab.json": #"{"a": -1}"#, "merges.txt": ""], "not a non-negative integer"),
        ("malformed configuration", ["tokenizer_config.json": "[", "tokenizer.json": "{}"], "test: tokenizer/tokenizer_config.json"),
        ("tokenizer.json without a model", ["tokenizer.json": #"{"model": 1}"#], "no BPE model"),
    ])
    func brokenFilesHeldInMemoryAreRefused(_ name: String, _ files: [String: String], _ message: String) {
        let error = #expect(throws: EngineError.self, "\(name)") {
            try CLIPTokenizer(files: files.mapValues { Array($0.utf8) }, location: "test: tokenizer")
        }
        #expect(error?.code == .invalidTokenizer, "\(name)")
        #expect("\(error.map { "\($0)" } ?? "")".contains(message), "\(name): \(error.map { "\($0)" } ?? "")")
    }

    @Test func aFileHeldInMemoryThatIsNotUTF8OrTooLargeIsRefused() {
        let notUTF8 = #expect(throws: EngineError.self) {
            try CLIPTokenizer(files: ["tokenizer.json": [0xFF, 0xFE]], location: "test: tokenizer")
        }
        #expect(notUTF8?.code == .invalidTokenizer)
        let huge = #expect(throws: EngineError.self) {
            try CLIPTokenizer(
                files: ["tokenizer.json": [UInt8](repeating: 0x20, count: CLIPTokenizer.maximumFileSize + 1)], location: "test: tokenizer")
        }
        #expect(huge?.code == .invalidTokenizer)
    }

    /// The files of `Fixtures/fuzz/tokenizer/` through the fuzz target's reading (up to a NUL byte
    /// `vocab.json`, after it `merges.txt`; without one `tokenizer.json`): each loads or throws
    /// `EngineError`. `crash-id-beyond-int32.json` (tiny-sd2's tokenizer.json with one id made
    /// 31922222222222 by the fuzzer) trapped converting that id to Int32; it is refused now.
    @Test func fuzzRegressionFilesLoadOrThrow() throws {
        let folder = repositoryURL.appendingPathComponent("Fixtures/fuzz/tokenizer")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        #expect(names.contains("crash-id-beyond-int32.json"))
        for name in names {
            let bytes = Array(try Data(contentsOf: folder.appendingPathComponent(name)))
            var files: [String: [UInt8]] = [:]
            if let nul = bytes.firstIndex(of: 0) {
                files["vocab.json"] = Array(bytes[..<nul])
                files["merges.txt"] = Array(bytes[(nul + 1)...])
            } else {
                files["tokenizer.json"] = bytes
            }
            do {
                let tokenizer = try CLIPTokenizer(files: files, location: name)
                #expect(tokenizer.encode("a cat").count == tokenizer.maximumLength, "\(name)")
            } catch {
                #expect(error.code == .invalidTokenizer, "\(name): \(error)")
                if name == "crash-id-beyond-int32.json" { #expect("\(error)".contains("31922222222222"), "\(error)") }
            }
        }
        let reproducer = #expect(throws: EngineError.self) {
            try CLIPTokenizer(
                files: ["tokenizer.json": Array(try Data(contentsOf: folder.appendingPathComponent("crash-id-beyond-int32.json")))], location: "x")
        }
        #expect(reproducer?.code == .invalidTokenizer)
    }

    /// The id bound sits exactly at `maximumTokenID`: the folder's vocabulary with one token moved
    /// to the last id allowed loads (and still encodes), moved one further it is refused.
    @Test func vocabularyIDsAreBoundedAtTheMaximum() throws {
        var vocabulary = Self.folder.vocabulary
        let token = "cat</w>"
        #expect(vocabulary[token] != nil)
        let merges = try CLIPTokenizer.parseMerges(
            text: String(decoding: try Data(contentsOf: Fixture.diffusers.appendingPathComponent("tokenizer/merges.txt")), as: UTF8.self),
            path: "merges.txt")
        vocabulary[token] = CLIPTokenizer.maximumTokenID - 1
        let last = try CLIPTokenizer(vocabulary: vocabulary, merges: merges)
        #expect(last.encode("a cat").contains(CLIPTokenizer.maximumTokenID - 1))
        vocabulary[token] = CLIPTokenizer.maximumTokenID
        let error = #expect(throws: EngineError.self) { try CLIPTokenizer(vocabulary: vocabulary, merges: merges) }
        #expect(error?.code == .invalidTokenizer)
    }
}
