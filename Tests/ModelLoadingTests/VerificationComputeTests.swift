import CheckpointFormats
import DiffusionEngine
import Foundation
import ModelLoading
import Quantization
import TensorCore
import TestSupport
import Testing

/// `verify` proves the arithmetic `generate` will use: the candidate computes in the precision
/// asked for (by default what ``ComputePrecision/automatic(for:int8Products:)`` picks), the
/// reference always in f32, and the thresholds are those of the less precise of storage and
/// arithmetic.
@Suite struct VerificationComputeTests {
    @Test func thresholdsAreTheLessPreciseOfStorageAndArithmetic() {
        typealias T = Verification.Thresholds
        // Float products judge by storage alone.
        #expect(T.defaults(for: .plain(.f16), compute: .f32) == T.defaults(for: .plain(.f16)))
        // bf16 products are judged as BF16 weights are, and say so.
        let bf16 = T.defaults(for: .plain(.f32), compute: .bf16)
        #expect(bf16.stage == 20 && bf16.image == 32 && bf16.label == "F32 in bf16 compute", "\(bf16)")
        #expect(T.defaults(for: .plain(.f16), compute: .bf16).label == "F16 in bf16 compute")
        // int8 compute multiplies int8 or Q8_0 weights only, whose thresholds already hold it;
        // a weaker storage keeps its own.
        #expect(T.defaults(for: .int8, compute: .int8) == T.defaults(for: .int8))
        #expect(T.defaults(for: .blocks(.q8_0), compute: .int8) == T.defaults(for: .blocks(.q8_0)))
        #expect(T.defaults(for: .blocks(.q4_K), compute: .bf16) == T.defaults(for: .blocks(.q4_K)))
    }

    /// int8 for int8 weights with int8 products, bf16 for all-BF16 matrix weights with bf16
    /// products, f32 for everything else (float weights are never rounded unasked).
    @Test func automaticComputeFollowsTheStoredPrecisionWhereTheProcessorCan() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let int8 = try StableDiffusionModel(path: try Self.int8Model(in: folder))
        let bf16 = try StableDiffusionModel(path: try Self.converted(.bf16, in: folder))
        let f16 = try StableDiffusionModel(path: try Self.converted(.f16, in: folder))
        let f32 = try StableDiffusionModel(path: tinySD1)
        #expect(bf16.pipeline.unet.weights.hasOnlyBF16MatrixWeights && !bf16.pipeline.unet.weights.hasInt8Weights)
        #expect(!f16.pipeline.unet.weights.hasOnlyBF16MatrixWeights && !int8.pipeline.unet.weights.hasOnlyBF16MatrixWeights)
        for (model, name, int8Choice, bf16Choice) in [
            (int8, "int8", ComputePrecision.int8, ComputePrecision.f32), (bf16, "bf16", .f32, .bf16), (f16, "f16", .f32, .f32),
            (f32, "f32", .f32, .f32),
        ] {
            let unet = model.pipeline.unet
            #expect(ComputePrecision.automatic(for: unet, int8Products: true, bf16Products: false) == int8Choice, "\(name)")
            #expect(ComputePrecision.automatic(for: unet, int8Products: false, bf16Products: true) == bf16Choice, "\(name)")
            #expect(ComputePrecision.automatic(for: unet, int8Products: false, bf16Products: false) == .f32, "\(name)")
            let both = ComputePrecision.automatic(for: unet, int8Products: true, bf16Products: true)
            #expect(both == (int8Choice != .f32 ? int8Choice : bf16Choice), "\(name)")
        }
    }

    /// The candidate's noise prediction and generation run in the precision asked for (int8
    /// where the processor can: its figures then differ from float compute's on the same
    /// weights), the reference's in f32 whatever the request says (its image is the same bits
    /// either way), and both pass the int8 thresholds.
    @Test func theCandidateComputesAsAskedAndTheReferenceInFloat() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let reference = try StableDiffusionModel(path: tinySD1)
        let candidate = try StableDiffusionModel(path: try Self.int8Model(in: folder))
        var request = StableDiffusionPipeline.Request(prompt: "a photo of an astronaut riding a horse")
        request.steps = 3
        request.width = 64
        request.height = 64
        request.scheduler = .ddim
        let float = try Verification.verify(reference: reference, candidate: candidate, request: request)
        #expect(float.compute == .f32 && float.passed, "\(float.stages.map { "\($0.name) \($0.value)" })")
        guard ComputeBackend.current.int8Products else {
            #expect(throws: EngineError.self) {
                try Verification.verify(reference: reference, candidate: candidate, request: request, compute: .int8)
            }
            return
        }
        // The request asks for int8: the reference must ignore it.
        request.computePrecision = .int8
        let int8 = try Verification.verify(reference: reference, candidate: candidate, request: request, compute: .int8)
        #expect(int8.compute == .int8 && int8.passed, "\(int8.stages.map { "\($0.name) \($0.value)" })")
        #expect(int8.thresholds == float.thresholds)
        #expect(int8.referenceImage.scalars == float.referenceImage.scalars, "the reference's run changed with the candidate's compute")
        for name in ["unet", "image"] {
            let a = float.stages.first { $0.name == name }!, b = int8.stages.first { $0.name == name }!
            print("verify \(name): float compute \(a.value) dB, int8 compute \(b.value) dB")
            #expect(a.value != b.value, "\(name): int8 compute measured what float compute did (\(a.value) dB)")
        }
        // The text encoder and the VAE compute in float either way.
        for name in ["text", "vae"] {
            let a = float.stages.first { $0.name == name }!, b = int8.stages.first { $0.name == name }!
            #expect(a.value == b.value, "\(name): \(a.value) against \(b.value) dB")
        }
        // The report says which arithmetic it judged.
        let json = int8.json(reference: "ref", candidate: "cand")
        #expect(json.objectValue?["candidate_compute"]?.stringValue == "int8")
    }

    /// The tiny SD 1.x fixture converted with `--dtype int8`, in `folder`.
    static func int8Model(in folder: String) throws -> String { try converted(.int8, in: folder) }

    /// The tiny SD 1.x fixture converted with `--dtype DTYPE`, in `folder`.
    static func converted(_ dtype: DTypeChoice, in folder: String) throws -> String {
        let path = folder + "/\(dtype).wpk"
        var options = Conversion.Options(dtype: dtype)
        options.recordSourceDigest = false
        _ = try Conversion.write(try CanonicalModel.open(tinySD1), to: path, options: options)
        return path
    }
}
