import Foundation
import ModelLoading
import Quantization
import StrictJSON
import TestSupport
import Testing

/// The allocation of `--dtype auto` on made-up predictions, where the best answer can be found
/// by trying every combination, and the whole loop on the tiny fixture with a prediction that
/// starts wrong.
@Suite("quality budget allocation")
struct BudgetAllocationTests {
    /// Three to five storages per tensor with sizes and errors like the ladder's (bigger is quieter),
    /// from a fixed generator.
    static func tensors(count: Int, seed: UInt64) -> [Sensitivity.TensorOptions] {
        var state = seed | 1
        func next() -> Double {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Double(state % 1_000_000) / 1_000_000
        }
        let ladder: [(StorageChoice, Double)] = [
            (.ggml(.f16), 16), (.ggml(.q8_0), 8.5), (.ggml(.q5_K), 5.5), (.ggml(.q4_0), 4.5), (.ggml(.q2_K), 2.625),
        ]
        return (0..<count).map { i in
            let values = 1000 + Int(next() * 100_000)
            let sensitivity = pow(10, next() * 4 - 6)
            let candidates = ladder.prefix(3 + i % 3).map { storage, bits in
                Sensitivity.Candidate(
                    storage: storage, bytes: Int(Double(values) * bits / 8), relativeError: sensitivity * pow(2, -2 * bits) * (0.8 + 0.4 * next()),
                    weightSNR: 6 * bits)
            }
            return Sensitivity.TensorOptions(name: "t\(i)", shape: [values], candidates: Array(candidates), weighted: true)
        }
    }

    /// Every combination's (bytes, noise).
    static func everyCombination(_ tensors: [Sensitivity.TensorOptions]) -> [(bytes: Int, noise: Double)] {
        var out: [(Int, Double)] = [(0, 0)]
        for t in tensors {
            out = out.flatMap { partial in t.candidates.map { (partial.0 + $0.bytes, partial.1 + $0.relativeError) } }
        }
        return out
    }

    @Test("a PSNR target: the noise budget holds and the size is within 3% of the best combination", arguments: [1, 2, 3, 4])
    func psnrGoalAgainstExhaustive(seed: UInt64) throws {
        let tensors = Self.tensors(count: 7, seed: seed)
        let all = Self.everyCombination(tensors)
        let offset = 30.0
        for target in [40.0, 50.0, 60.0] {
            let budget = BudgetAllocator.noise(forPSNR: target, offset: offset)
            let feasible = all.filter { $0.noise <= budget }
            let allocation = BudgetAllocator.allocate(tensors, fixedBytes: 100, goal: .psnr(target), offset: offset)
            guard let best = feasible.map(\.bytes).min() else {
                #expect(allocation == nil)
                continue
            }
            let a = try #require(allocation)
            #expect(a.noise <= budget * (1 + 1e-12))
            #expect(a.predictedPSNR(offset: offset) >= target - 1e-9)
            #expect(Double(a.bytes - 100) <= Double(best) * 1.03, "target \(target): \(a.bytes - 100) bytes vs best \(best)")
        }
    }

    @Test("a size budget: the size holds and the noise is within 1 dB of the best combination", arguments: [5, 6, 7])
    func sizeGoalAgainstExhaustive(seed: UInt64) throws {
        let tensors = Self.tensors(count: 7, seed: seed)
        let all = Self.everyCombination(tensors)
        let sizes = all.map(\.bytes).sorted()
        for quantile in [0.1, 0.5, 0.9] {
            let limit = sizes[Int(Double(sizes.count - 1) * quantile)] + 100
            let best = all.filter { $0.bytes <= limit - 100 }.map(\.noise).min()!
            let a = try #require(BudgetAllocator.allocate(tensors, fixedBytes: 100, goal: .bytes(limit), offset: 0))
            #expect(a.bytes <= limit)
            #expect(10 * log10(a.noise / best) <= 1.0, "limit \(limit): noise \(a.noise) vs best \(best)")
        }
        #expect(BudgetAllocator.allocate(tensors, fixedBytes: 100, goal: .bytes(sizes[0] + 99), offset: 0) == nil)
    }

    @Test("the trade-off curve grows in size as its noise falls; uniform picks take the type or its fallback")
    func frontierAndUniform() throws {
        let tensors = Self.tensors(count: 40, seed: 9)
        let curve = BudgetAllocator.frontier(tensors, fixedBytes: 0)
        #expect(curve.count >= 10)
        for (a, b) in zip(curve, curve.dropFirst()) {
            #expect(a.bytes < b.bytes)
            #expect(a.noise >= b.noise)
        }
        // Tensors with three candidates lack Q4_0 and Q2_K: uniform Q2_K falls back to F16 there
        // (Q2_K's fallback Q4_0 is missing too), and takes Q2_K elsewhere.
        let q2 = BudgetAllocator.uniform(tensors, storage: .ggml(.q2_K), fixedBytes: 0)
        for (pick, t) in zip(q2.picks, tensors) {
            let expected: StorageChoice = t.candidates.count == 5 ? .ggml(.q2_K) : t.candidates.count == 4 ? .ggml(.q4_0) : .ggml(.f16)
            #expect(pick.storage == expected, "\(t.name)")
        }
    }

    @Test("a prediction that starts too optimistic misses, is corrected by the measurement, and the next attempt meets the target")
    func correctionLoop() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try StableDiffusionModel(path: tinySD1)
        var options = QualityBudget.Options(goal: .psnr(35))
        // 25 dB above the fitted offset: the first allocation is far too coarse.
        options.offset = QualityBudget.defaultOffset + 25
        options.maxAttempts = 3
        // The correction alone, without the measured gains' own offset.
        options.measuredGains = false
        let output = folder.appendingPathComponent("auto.wpk").path
        let result = try QualityBudget.run(source, to: output, options: options)
        #expect(result.attempts.count >= 2)
        let first = try #require(result.attempts.first)
        #expect(!first.passed)
        #expect(first.measuredPSNR < 35)
        let last = result.written
        #expect(last.passed)
        #expect(result.attempts.contains { $0.number == last.number })
        #expect(last.measuredPSNR >= 35)
        // The second attempt's offset is the first's corrected by what it measured.
        #expect(abs(result.attempts[1].offset - (first.offset + first.measuredPSNR - first.predictedPSNR)) < 1e-9)
        #expect(FileManager.default.fileExists(atPath: output))
        // Missed attempts left nothing behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["auto.wpk"])
    }
}

/// A file's recorded budget is read back defensively: whatever a hostile or damaged file puts
/// there, `inspect` shows no budget (not JSON, not an object) or shows what it can, never traps.
@Suite("quality budget record read back from hostile files")
struct QualityBudgetRecordTests {
    @Test(
        "recipes that are not a JSON object are no budget",
        arguments: ["", "   ", "{not json", "[]", "42", "\"text\"", String(repeating: "[", count: 100_000), "{\"a\": 1e999}"])
    func notAnObject(_ text: String) {
        #expect(QualityBudgetRecord(header: nil, metadata: [ModelExport.GGUFBudget.recipeKey: text]) == nil)
    }

    @Test("an object with every field of the wrong type prints placeholders, and a broken measured record is left out")
    func wrongTypes() throws {
        let recipe =
            #"{"goal": [], "predicted_image_psnr": {}, "attempt": "x", "calibration": 3, "verification": {"prompt": 5, "seed": []}, "ladder": [1, null], "gains": [1, null, {"group": 7, "gain_db": "loud"}], "tensors": {"w": {"type": 7, "predicted_error_db": "loud"}}, "int8_inputs": {"tensors": "many", "scale_db": [], "image_psnr_f32": {}}}"#
        let record = try #require(
            QualityBudgetRecord(
                header: nil,
                metadata: [
                    ModelExport.GGUFBudget.recipeKey: recipe, ModelExport.GGUFBudget.measuredKey: "{broken" + String(repeating: " ", count: 64),
                ]))
        #expect(record.measured == nil)
        #expect(record.predictedErrorDB(of: "w") == nil)
        let lines = record.lines
        #expect(lines.first?.contains("unknown goal") == true, "\(lines)")
        #expect(lines.first?.contains("not measured") == true, "\(lines)")
        #expect(lines.allSatisfy { !$0.contains("\n") })
        #expect(!lines.contains { $0.hasPrefix("gains") || $0.hasPrefix("int8 inputs") }, "\(lines)")
        let good = try #require(
            QualityBudgetRecord(
                header: nil,
                metadata: [
                    ModelExport.GGUFBudget.recipeKey:
                        #"{"goal": {"max_size": 5}, "gains": [{"group": "unet mid_block", "gain_db": -3}, {"group": "vae encoder"}, {"group": 2, "gain_db": 4.5}]}"#
                ]))
        #expect(good.lines.contains("gains measured for 2 of 3 blocks: -3.00 dB (unet mid_block) to 4.50 dB (?)"), "\(good.lines)")
        #expect(!good.lines.contains { $0.hasPrefix("int8 inputs") }, "\(good.lines)")
        let header = try JSONParser.parse(
            #"{"quality_budget": {"goal": {"max_size": 5}, "predicted_image_psnr": 40, "int8_inputs": {"tensors": 12, "scale_db": 10.5, "image_psnr_f32": 50, "image_psnr_int8": "inf"}}, "quality_budget_measured": {"measured_image_psnr": 41, "passed": true, "compute": "int8"}}"#
        ).objectValue
        let int8 = try #require(QualityBudgetRecord(header: header, metadata: [:]))
        #expect(int8.lines.first == "at most 5 bytes; predicted 40.00 dB, measured 41.00 dB in int8 compute (met)", "\(int8.lines)")
        #expect(
            int8.lines.contains(
                "int8 inputs of 12 layers measured at 10.50 dB over the layer gains (image 50.00 dB in float, inf dB in int8 compute)"),
            "\(int8.lines)")
    }

    @Test("a GGUF whose recipe string is damaged inspects with no budget; a good one shows it")
    func throughAFile() throws {
        let folder = try makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try CanonicalModel.open(tinySD1)
        for (name, text, expected) in [
            ("bad.gguf", "{\"goal\": ", false), ("good.gguf", #"{"goal": {"target_psnr": 33}, "predicted_image_psnr": 34.5}"#, true),
        ] {
            let path = folder.appendingPathComponent(name).path
            _ = try ModelExport.writeGGUF(
                model, dtype: .f16, to: path, overwrite: false, tool: "test", extraMetadata: [ModelExport.GGUFBudget.recipeKey: text])
            let inspection = try Inspection(try CanonicalModel.open(path))
            #expect((inspection.qualityBudget != nil) == expected, "\(name)")
            if expected {
                #expect(inspection.qualityBudget?.lines.first == "target image PSNR 33.00 dB; predicted 34.50 dB, not measured")
            }
        }
    }
}
