import Foundation
import StrictJSON
import Testing

@testable import DiffusionEngine

/// Issue 16: a configuration number from a file never traps, overflows or sizes an allocation
/// beyond the documented limits (Docs/limits.md); each is refused with `invalidConfiguration`.
@Suite("configuration bounds")
struct ConfigurationBoundsTests {
    /// The tiny fixture's configuration with one field replaced by raw JSON text.
    static func patched(_ component: String, _ key: String, _ raw: String) throws -> JSONValue {
        let url = Fixture.diffusers.appendingPathComponent("\(component)/config.json")
        var object = try #require(try JSONParser.parse(String(contentsOf: url, encoding: .utf8)).objectValue)
        object[key] = try JSONParser.parse(raw)
        return .object(object)
    }

    static func expectRefused(_ body: () throws(EngineError) -> Void, _ comment: Comment) {
        do {
            try body()
            Issue.record("accepted: \(comment)")
        } catch {
            #expect(error.code == .invalidConfiguration, comment)
            #expect(!error.description.contains("\n"))
        }
    }

    @Test("the fixture's own configurations are inside the bounds")
    func fixturesPass() throws {
        for (component, make) in [
            ("unet", { (v: JSONValue) throws(EngineError) in _ = try UNetConfiguration(json: v) }),
            ("vae", { (v: JSONValue) throws(EngineError) in _ = try AutoencoderKLConfiguration(json: v) }),
            ("text_encoder", { (v: JSONValue) throws(EngineError) in _ = try CLIPTextConfiguration(json: v) }),
        ] {
            let url = Fixture.diffusers.appendingPathComponent("\(component)/config.json")
            try make(try JSONParser.parse(String(contentsOf: url, encoding: .utf8)))
        }
        for preset in [UNetConfiguration.sd15, .sd21, .sdxl] { try preset.validate() }
        for preset in [AutoencoderKLConfiguration.sd15, .sd21, .sdxl] { try preset.validate() }
        for preset in [CLIPTextConfiguration.sd15, .sd21] { try preset.validate() }
        for preset in [SchedulerConfiguration.sd15, .sd21, .sdxl] { try preset.validate() }
    }

    static let unetCases: [(String, String)] = [
        ("sample_size", "1000000000"), ("sample_size", "4611686018427387904"), ("sample_size", "9223372036854775807"),
        ("sample_size", "18446744073709551615"), ("sample_size", "0"), ("sample_size", "-64"), ("sample_size", "64.5"),
        ("sample_size", "\"64\""), ("sample_size", "[64]"), ("sample_size", "1e300"),
        ("in_channels", "0"), ("in_channels", "100000"), ("in_channels", "-4"), ("in_channels", "4.5"),
        ("out_channels", "4611686018427387904"), ("cross_attention_dim", "1099511627776"), ("cross_attention_dim", "0"),
        ("layers_per_block", "1000000"), ("layers_per_block", "0"), ("norm_num_groups", "0"), ("norm_num_groups", "1048576"),
        ("norm_eps", "0"), ("norm_eps", "-1"), ("norm_eps", "1e300"), ("norm_eps", "\"x\""), ("freq_shift", "1e300"),
        ("attention_head_dim", "0"), ("attention_head_dim", "1000000"), ("attention_head_dim", "[1, 2, 3, 4, 5, 6, 7, 8, 9]"),
        ("num_attention_heads", "-1"), ("transformer_layers_per_block", "1000"),
        ("block_out_channels", "[]"), ("block_out_channels", "[32, -64]"), ("block_out_channels", "[32, 64.5]"),
        ("block_out_channels", "[4611686018427387904, 4611686018427387904]"), ("block_out_channels", "[32, \"64\"]"),
        ("block_out_channels", "[" + Array(repeating: "32", count: 100_000).joined(separator: ",") + "]"),
        ("down_block_types", "[" + Array(repeating: "\"DownBlock2D\"", count: 100_000).joined(separator: ",") + "]"),
        ("up_block_types", "[1, 2]"),
        ("reverse_transformer_layers_per_block", "[[1], [1], [1], [1], [1], [1], [1], [1], [1]]"),
    ]

    @Test("hostile UNet numbers are refused", arguments: unetCases)
    func unet(_ field: (String, String)) throws {
        let json = try Self.patched("unet", field.0, field.1)
        Self.expectRefused({ () throws(EngineError) in _ = try UNetConfiguration(json: json) }, "\(field.0) = \(field.1.prefix(60))")
    }

    static let vaeCases: [(String, String)] = [
        ("sample_size", "4611686018427387904"), ("sample_size", "0"), ("latent_channels", "1000000"), ("latent_channels", "0"),
        ("in_channels", "-3"), ("layers_per_block", "1000"), ("norm_num_groups", "0"), ("scaling_factor", "0"),
        ("scaling_factor", "1e300"), ("scaling_factor", "1e38"), ("shift_factor", "1e300"), ("scaling_factor", "\"0.18\""),
        ("block_out_channels", "[]"), ("block_out_channels", "[32, -64]"), ("block_out_channels", "[32, 64.5]"),
        ("block_out_channels", "[" + Array(repeating: "32", count: 70).joined(separator: ",") + "]"),
        ("block_out_channels", "[9223372036854775807]"),
    ]

    @Test("hostile VAE numbers are refused", arguments: vaeCases)
    func vae(_ field: (String, String)) throws {
        let json = try Self.patched("vae", field.0, field.1)
        Self.expectRefused({ () throws(EngineError) in _ = try AutoencoderKLConfiguration(json: json) }, "\(field.0) = \(field.1.prefix(60))")
    }

    static let textCases: [(String, String)] = [
        ("vocab_size", "4611686018427387904"), ("vocab_size", "0"), ("hidden_size", "1099511627776"), ("hidden_size", "0"),
        ("intermediate_size", "9223372036854775807"), ("num_hidden_layers", "100000"), ("num_hidden_layers", "0"),
        ("num_attention_heads", "0"), ("num_attention_heads", "1000"), ("max_position_embeddings", "4611686018427387904"),
        ("max_position_embeddings", "0"), ("eos_token_id", "1000000000"), ("layer_norm_eps", "0"), ("layer_norm_eps", "1e300"),
        ("hidden_size", "32.5"), ("hidden_size", "-32"),
    ]

    @Test("hostile text encoder numbers are refused", arguments: textCases)
    func textEncoder(_ field: (String, String)) throws {
        let json = try Self.patched("text_encoder", field.0, field.1)
        Self.expectRefused({ () throws(EngineError) in _ = try CLIPTextConfiguration(json: json) }, "\(field.0) = \(field.1.prefix(60))")
    }

    static let schedulerCases: [(String, String)] = [
        ("num_train_timesteps", "1099511627776"), ("num_train_timesteps", "1000001"), ("num_train_timesteps", "1"),
        ("num_train_timesteps", "-1000"), ("num_train_timesteps", "1000.5"), ("steps_offset", "4611686018427387904"),
        ("beta_start", "-0.1"), ("beta_end", "2"), ("beta_end", "1e300"), ("solver_order", "1000"), ("solver_order", "0"),
        ("clip_sample_range", "0"), ("trained_betas", "[0.1, 5]"), ("trained_betas", "[0.1, \"x\"]"),
        ("trained_betas", "[" + Array(repeating: "0.01", count: 100_001).joined(separator: ",") + "]"),
    ]

    @Test("hostile scheduler numbers are refused", arguments: schedulerCases)
    func scheduler(_ field: (String, String)) throws {
        var object = JSONObject()
        object["_class_name"] = "DDIMScheduler"
        object[field.0] = try JSONParser.parse(field.1)
        let json = JSONValue.object(object)
        Self.expectRefused({ () throws(EngineError) in _ = try SchedulerConfiguration(json: json) }, "\(field.0) = \(field.1.prefix(60))")
    }

    @Test("a scheduler configuration built in code is checked before its schedule is allocated")
    func schedulerInCode() {
        var c = SchedulerConfiguration.sd15
        c.trainTimesteps = 1 << 40
        Self.expectRefused({ () throws(EngineError) in _ = try SchedulerFactory.make(.ddim, configuration: c, steps: 10) }, "2^40 timesteps")
    }

    @Test("a configuration built in code is checked by validate()")
    func unetInCode() {
        var c = UNetConfiguration.sd15
        c.sampleSize = 1 << 62
        Self.expectRefused({ () throws(EngineError) in try c.validate() }, "sample size 2^62")
    }
}

@Suite("generation limits")
struct GenerationLimitsTests {
    static func request(width: Int = 512, height: Int = 512, steps: Int = 20, guidance: Float = 7.5) -> StableDiffusionPipeline.Request {
        var r = StableDiffusionPipeline.Request(prompt: "x")
        r.width = width
        r.height = height
        r.steps = steps
        r.guidanceScale = guidance
        return r
    }

    @Test("requests inside the limits pass", arguments: [(8, 8, 1, Float(0)), (512, 512, 20, 7.5), (2048, 2048, 1000, -1), (1024, 768, 50, 1000)])
    func valid(_ c: (Int, Int, Int, Float)) throws {
        try Self.request(width: c.0, height: c.1, steps: c.2, guidance: c.3).validate()
    }

    @Test(
        "requests outside the limits are refused with invalidInput",
        arguments: [
            (4_611_686_018_427_387_904, 512, 20, Float(7.5)), (100_000, 512, 20, 7.5), (2056, 512, 20, 7.5), (0, 512, 20, 7.5),
            (-512, 512, 20, 7.5), (512, 12, 20, 7.5), (512, Int.max, 20, 7.5), (Int.min, 512, 20, 7.5), (512, 512, 0, 7.5),
            (512, 512, 1001, 7.5), (512, 512, -1, 7.5), (512, 512, 20, .nan), (512, 512, 20, .infinity), (512, 512, 20, 1e6),
            (512, 512, 20, -.infinity),
        ])
    func invalid(_ c: (Int, Int, Int, Float)) {
        do {
            try Self.request(width: c.0, height: c.1, steps: c.2, guidance: c.3).validate()
            Issue.record("accepted \(c)")
        } catch {
            #expect(error.code == .invalidInput)
        }
    }

    @Test("seeds are read as torch.manual_seed reads them")
    func seeds() {
        #expect(GenerationLimits.torchSeed("0") == 0)
        #expect(GenerationLimits.torchSeed("-1") == UInt64.max)
        #expect(GenerationLimits.torchSeed("-9223372036854775808") == 1 << 63)
        #expect(GenerationLimits.torchSeed("18446744073709551615") == UInt64.max)
        #expect(GenerationLimits.torchSeed("18446744073709551616") == nil)
        #expect(GenerationLimits.torchSeed("-9223372036854775809") == nil)
        #expect(GenerationLimits.torchSeed("1.5") == nil)
        #expect(GenerationLimits.torchSeed("") == nil)
    }
}

@Suite("CLIP BPE: bounded work, the reference's merges")
struct BPEBoundTests {
    static let tokenizer = try! CLIPTokenizer.bundled()

    /// transformers' `CLIPTokenizer.bpe` on strings, as the reference writes it (quadratic).
    static let reference: @Sendable (String) -> [Int] = {
        let files = try! CLIPTokenizer.bundledFiles()
        let mergesText = String(decoding: files.first { $0.name == "merges.txt" }!.bytes, as: UTF8.self)
        let merges = try! CLIPTokenizer.parseMerges(text: mergesText, path: "merges.txt")
        var table: [String: Int] = [:]
        for (i, m) in merges.enumerated() where table[m.0 + " " + m.1] == nil { table[m.0 + " " + m.1] = i }
        let ranks = table
        let vocabulary = tokenizer.vocabulary
        return { word in
            var symbols = Array(word.utf8).map { String(ByteLevel.characters[Int($0)]) }
            symbols[symbols.count - 1] += "</w>"
            while symbols.count > 1 {
                var best: (rank: Int, first: String, second: String)?
                for i in 0..<(symbols.count - 1) {
                    if let r = ranks[symbols[i] + " " + symbols[i + 1]], best == nil || r < best!.rank { best = (r, symbols[i], symbols[i + 1]) }
                }
                guard let best else { break }
                var merged: [String] = []
                var i = 0
                while i < symbols.count {
                    if i + 1 < symbols.count, symbols[i] == best.first, symbols[i + 1] == best.second {
                        merged.append(best.first + best.second)
                        i += 2
                    } else {
                        merged.append(symbols[i])
                        i += 1
                    }
                }
                symbols = merged
            }
            return symbols.map { vocabulary[$0]! }
        }
    }()

    static let words: [String] = {
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func next() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
        let alphabet = Array("aeinorstlhdcumbgpfy")
        var words = [
            "aaaaaaaaaaaaaaaaaaaaaaaaa", "abababababababababababab", "lllllllllll", "thethethethethe", "a",
            "mississippi", "antidisestablishmentarianism", String(repeating: "photograph", count: 200),
        ]
        for _ in 0..<300 {
            let length = 1 + Int(next() % 40)
            words.append(String((0..<length).map { _ in alphabet[Int(next() % UInt64(alphabet.count))] }))
        }
        return words
    }()

    @Test("ids equal the reference algorithm's on 300 random words and repetitive ones")
    func matchesReference() {
        for word in Self.words {
            #expect(Self.tokenizer.tokenize(word) == Self.reference(word), "\(word.prefix(40))")
        }
    }

    @Test("BPE work grows as n log n with the word: 8x the bytes costs far less than 64x the time")
    func longWord() {
        func seconds(_ bytes: Int) -> Double {
            let word = String(repeating: "ab", count: bytes / 2)
            // This thread's CPU time, not the wall clock: other work on the machine does not
            // stretch one side of the ratio (a loaded CI run measured 30.8 on the wall clock).
            func cpu() -> Double {
                var t = timespec()
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
                return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
            }
            let start = cpu()
            let ids = Self.tokenizer.tokenize(word)
            #expect(!ids.isEmpty)
            return cpu() - start
        }
        let small = seconds(16_384), large = seconds(131_072)
        // Quadratic merging (13 s for a 130 KB word in a release build) gives a ratio near 64;
        // n log n about 10. The bound leaves room for a loaded machine.
        #expect(large / max(small, 1e-3) < 30, "16 KB: \(small) s, 128 KB: \(large) s")
        #expect(Self.tokenizer.encode(String(repeating: "ab", count: 65_000)).count == 77)
    }

    @Test("encode keeps the first 75 tokens of tokenize")
    func encodePrefix() {
        let text = Array(repeating: "a photograph of an astronaut riding a horse", count: 30).joined(separator: ", ")
        let full = Self.tokenizer.tokenize(text)
        let ids = Self.tokenizer.encode(text)
        #expect(Array(ids[1..<76]) == Array(full.prefix(75)))
        #expect(Self.tokenizer.tokenize(text, limit: 10) == Array(full.prefix(10)))
    }
}
