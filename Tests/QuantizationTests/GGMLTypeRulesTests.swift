import Quantization
import TensorCore
import Testing

@Suite("ggml type rules")
struct GGMLTypeRulesTests {
    func d(_ name: String, _ shape: [Int], _ dtype: DType = .f32) -> TensorDescriptor {
        TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: 0)
    }

    @Test("matrices get the target; 1-D, norms, embeddings, conv_in/conv_out and small tensors stay f16/f32")
    func defaults() {
        let rules = GGMLTypeRules(target: .q4_K, rows: .lastDimension)
        #expect(rules.decision(for: d("model.diffusion_model.input_blocks.1.1.proj_in.weight", [320, 512])).type == .q4_K)
        #expect(rules.decision(for: d("model.diffusion_model.input_blocks.1.1.norm.bias", [320])).type == .f32)
        #expect(rules.decision(for: d("model.diffusion_model.time_embed.0.weight", [1280, 512])).type == .f16)
        #expect(rules.decision(for: d("model.diffusion_model.input_blocks.0.0.weight", [320, 4, 3, 256])).type == .f16)
        #expect(rules.decision(for: d("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", [49408, 768])).type == .f16)
        #expect(rules.decision(for: d("first_stage_model.decoder.conv_out.weight", [3, 128, 3, 256])).type == .f16)
        #expect(rules.decision(for: d("small", [16, 32])).type == .f16)
        #expect(rules.decision(for: d("ids", [1, 77], .i64)).type == .i64)
    }

    @Test("a row that does not fit the block falls back to the nearest type at least as precise, recorded")
    func fallback() {
        let rules = GGMLTypeRules(target: .q4_K, rows: .lastDimension)
        let wide = rules.decision(for: d("w", [64, 320]))
        #expect(wide.type == .q5_0)
        #expect(wide.fallbackFrom == .q4_K)
        #expect(wide.reason?.contains("320") == true)
        let conv = rules.decision(for: d("conv", [320, 320, 3, 3]))
        #expect(conv.type == .f16)
        #expect(conv.fallbackFrom == .q4_K)
        let engineRows = GGMLTypeRules(target: .q6_K, rows: .allButFirstDimension)
        // 320 · 3 · 3 = 2880 = 90 · 32: Q6_K's 256 does not fit, Q8_0's 32 does.
        #expect(engineRows.decision(for: d("conv", [320, 320, 3, 3])).type == .q8_0)
        #expect(GGMLTypeRules(target: .q4_0, rows: .lastDimension).decision(for: d("w", [64, 48])).type == .f16)
        #expect(GGMLTypeRules.fallback(for: .q2_K) == .q4_0)
        #expect(GGMLTypeRules.fallback(for: .q5_K) == .q5_1)
    }

    @Test("GLOB=TYPE overrides win, and bad overrides are refused")
    func overrides() throws {
        let rules = GGMLTypeRules(
            target: .q4_K, overrides: [try .init(parsing: "*attn2*=q8_0"), try .init(parsing: "*norm*=q4_0")], rows: .lastDimension)
        #expect(rules.decision(for: d("a.attn2.to_k.weight", [320, 768])).type == .q8_0)
        #expect(rules.decision(for: d("a.attn1.to_k.weight", [320, 512])).type == .q4_K)
        // The override reaches a 1-D norm the defaults keep (as --tensor-type-rules can).
        #expect(rules.decision(for: d("a.norm.weight", [320])).type == .q4_0)
        #expect(throws: QuantizationError.self) { try GGMLTypeRules.Override(parsing: "*attn*") }
        #expect(throws: QuantizationError.self) { try GGMLTypeRules.Override(parsing: "*attn*=q9_9") }
        #expect(throws: QuantizationError.self) { try GGMLTypeRules.Override(parsing: "=q8_0") }
        #expect(throws: QuantizationError.self) { try GGMLTypeRules.Override(parsing: "*=iq2_xxs") }
    }
}

@Suite("ggml block kernels")
struct GGMLBlockKernelTests {
    @Test("every written type round-trips within its expected error and reports it", arguments: GGMLType.quantizable)
    func roundTrip(type: GGMLType) throws {
        let values = normalValues(512, seed: 11)
        var blocks = [UInt8](repeating: 0, count: type.byteCount(values: 512)!)
        let accumulator = try values.withUnsafeBufferPointer { src in
            try blocks.withUnsafeMutableBytes { try GGMLBlocks.quantize(src.baseAddress!, count: 512, type: type, into: $0.baseAddress!) }
        }
        var decoded = [Float](repeating: 0, count: 512)
        try blocks.withUnsafeBytes { raw in
            try decoded.withUnsafeMutableBufferPointer { try GGMLBlocks.dequantize(raw, type: type, count: 512, into: $0.baseAddress!) }
        }
        let metrics = QuantizationMetrics.compare(reference: values, candidate: decoded)
        #expect(accumulator.metrics == metrics)
        // Roughly 6 dB per bit, less the scales' overhead; Q2_K is the floor.
        let floor = type == .q8_0 ? 35.0 : type.bitsPerWeight > 5 ? 22 : type.bitsPerWeight > 4 ? 16 : 5
        #expect((metrics.snrDecibels ?? .infinity) > floor, "\(type): \(metrics)")
    }

    @Test("NaN and infinities are refused, and partial blocks are refused")
    func refusals() {
        var values = [Float](repeating: 0.5, count: 256)
        values[7] = .nan
        var out = [UInt8](repeating: 0, count: 210)
        #expect(throws: QuantizationError.self) {
            try values.withUnsafeBufferPointer { src in
                try out.withUnsafeMutableBytes { try GGMLBlocks.quantize(src.baseAddress!, count: 256, type: .q6_K, into: $0.baseAddress!) }
            }
        }
        #expect(throws: QuantizationError.self) {
            try values.withUnsafeBufferPointer { src in
                try out.withUnsafeMutableBytes { try GGMLBlocks.quantize(src.baseAddress!, count: 100, type: .q4_0, into: $0.baseAddress!) }
            }
        }
    }

    @Test("type names, sizes and bits per weight")
    func table() {
        #expect(GGMLType(name: "q4_k") == .q4_K)
        #expect(GGMLType(name: "Q8_0") == .q8_0)
        #expect(GGMLType(name: "q9") == nil)
        #expect(GGMLType.q4_K.bitsPerWeight == 4.5)
        #expect(GGMLType.q2_K.blockBytes == 84)
        #expect(GGMLType.q6_K.byteCount(values: 512) == 420)
        #expect(GGMLType.q6_K.byteCount(values: 500) == nil)
        #expect(GGMLType(rawValue: 99).isKnown == false)
    }
}
