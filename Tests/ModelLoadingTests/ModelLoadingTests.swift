import CheckpointFormats
import DiffusionEngine
import Foundation
import ModelCatalog
import ModelLoading
import StrictJSON
import TestSupport
import Testing

@Suite struct CanonicalModelTests {
    @Test func opensASingleFileUnderCanonicalNames() throws {
        let model = try CanonicalModel.open(tinySD1)
        #expect(model.isCanonical)
        #expect(model.detection.familyID == "sd1")
        #expect(model.detection.kind == .pipeline)
        #expect(model.detection.predictionType == .epsilon)
        #expect(model.store.descriptor(named: "vae.decoder.conv_out.weight") != nil)
        #expect(model.sourceName(of: "vae.decoder.conv_out.weight") == "first_stage_model.decoder.conv_out.weight")
        #expect(model.canonicalNamesBySource["first_stage_model.decoder.conv_out.weight"] == ["vae.decoder.conv_out.weight"])
        // The tiny model's widths are not SD 1.5's, and a single file states no head counts.
        #expect(model.headCounts == .assumedHeadDim64)
    }

    @Test func aDiffusersFolderStatesItsHeadCounts() throws {
        let model = try CanonicalModel.open(repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/diffusers").path)
        #expect(model.headCounts == .read)
        #expect(model.detection.familyID == "sdxl")
    }

    @Test func aConvertedModelAnswersThroughTheStoreProtocols() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let output = folder + "/int8.wpk"
        var options = Conversion.Options(dtype: .int8)
        options.recordSourceDigest = false
        let result = try Conversion.write(try CanonicalModel.open(tinySD1), to: output, options: options)
        #expect(result.entries.contains { $0.quantization != nil })
        let converted = try CanonicalModel.open(output)
        #expect(converted.recorded["layout"] != nil)
        #expect(converted.sourceName(of: "vae.decoder.conv_out.weight") == "first_stage_model.decoder.conv_out.weight")
        let quantized = try #require(result.entries.first { $0.quantization != nil })
        #expect(converted.store.storedDType(of: quantized.descriptor.name) == .i8)
        #expect(converted.store.records?.storageRecord(of: quantized.descriptor.name)?.quantization != nil)
        let engine = try StableDiffusionModel(converted)
        #expect(engine.unetDType == .i8)
    }

    @Test func anInputWithoutTensorsIsRefused() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let empty = folder + "/empty.safetensors"
        // A valid safetensors file with an empty header object.
        try Data([2, 0, 0, 0, 0, 0, 0, 0] + Array("{}".utf8)).write(to: URL(fileURLWithPath: empty))
        let model = try CanonicalModel.open(empty)
        #expect(throws: ModelLoadingError.self) {
            do { _ = try Conversion.write(model, to: folder + "/empty.wpk", options: .init()) } catch let error as ModelLoadingError {
                #expect(error.code == .noTensors)
                throw error
            }
        }
        #expect(!FileManager.default.fileExists(atPath: folder + "/empty.wpk"))
    }
}

@Suite struct FamilyRulesTests {
    @Test func familyRulesComeFromTheArchitectureData() throws {
        let catalog = ArchitectureCatalog.standard
        let sd1 = try #require(catalog.family("sd1")), sd2 = try #require(catalog.family("sd2")), sdxl = try #require(catalog.family("sdxl"))
        #expect(sd1.textEncoders.map(\.padsWithZero) == [false])
        #expect(sd2.textEncoders.map(\.padsWithZero) == [true])
        #expect(sdxl.textEncoders.map(\.padsWithZero) == [false, true])
        #expect(sdxl.pooledTextEncoder?.component == .textEncoder2)
        #expect(sd1.pooledTextEncoder == nil)
        #expect(sdxl.forceZerosForEmptyPrompt && !sd1.forceZerosForEmptyPrompt)
        #expect(sdxl.addedTimeIDs == 6 && sd1.addedTimeIDs == nil)
    }

    /// diffusers' tiny SDXL configuration says addition_time_embed_dim 8: the single file's
    /// weights determine it ((80 - 32) / 6), where the published 256 would not fit.
    @Test func sdxlAdditionTimeEmbedDimIsReadFromTheWeights() throws {
        let model = try CanonicalModel.open(tinySDXL)
        let derived = DiffusersConfigs.files(for: model.detection, predictionType: model.detection.predictionType)
        let unet = try #require(derived.first { $0.0 == "unet/config.json" }?.1.objectValue)
        let data = try Data(contentsOf: repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/diffusers/unet/config.json"))
        let reference = try data.withUnsafeBytes { (raw) throws(JSONError) in try JSONParser.parse(raw) }.objectValue
        #expect(unet["addition_time_embed_dim"]?.intValue == reference?["addition_time_embed_dim"]?.intValue)
        #expect(unet["addition_time_embed_dim"]?.intValue == 8)
    }
}

@Suite struct PipelineAssemblyTests {
    /// The tiny SDXL's text encoders have a 514-token vocabulary, so it needs its own tokenizers
    /// (a folder with them and model_index.json only); every network configuration, SDXL's
    /// addition_time_embed_dim included, is derived from the single file's weights.
    @Test func aTinySDXLSingleFileGenerates() throws {
        let folder = try makeTemporaryFolder().path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let fixture = repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/diffusers").path
        for item in ["tokenizer", "tokenizer_2", "model_index.json"] {
            try FileManager.default.copyItem(atPath: fixture + "/" + item, toPath: folder + "/" + item)
        }
        let model = try StableDiffusionModel(path: tinySDXL, configurationFolder: folder)
        #expect(model.configurations["unet/config.json"]?.origin == .derived)
        #expect(model.configurations["unet/config.json"]?.value.objectValue?["addition_time_embed_dim"]?.intValue == 8)
        #expect(model.pipeline.secondTextEncoder != nil)
        #expect(model.pipeline.forceZerosForEmptyPrompt)
        var request = StableDiffusionPipeline.Request(prompt: "a red bicycle")
        request.steps = 2
        request.width = 64
        request.height = 64
        var scheduled: [Float] = []
        let output = try model.pipeline.generate(request) { event in
            if case .schedule(let timesteps) = event { scheduled = timesteps }
        }
        #expect(output.image.shape == [64, 64, 3])
        #expect(scheduled.count == 2 && scheduled == output.timesteps)
    }

    @Test func karrasSigmasAreARequestSettingNotAModelState() throws {
        let model = try StableDiffusionModel(path: tinySD1)
        var request = StableDiffusionPipeline.Request(prompt: "p")
        request.steps = 8
        request.scheduler = .euler
        let plain = try model.pipeline.scheduler(for: request).timesteps
        request.useKarrasSigmas = true
        let karras = try model.pipeline.scheduler(for: request).timesteps
        #expect(plain != karras)
        #expect(model.pipeline.schedulerConfiguration.useKarrasSigmas != true)
    }

    @Test func aConfigurationFolderReplacesDerivedConfigurations() throws {
        let folder = repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/diffusers").path
        let model = try StableDiffusionModel(path: tinySDXL, configurationFolder: folder)
        #expect(model.configurations["unet/config.json"]?.origin == .configurationFolder)
        #expect(model.configurations["text_encoder_2/config.json"]?.origin == .configurationFolder)
        #expect(throws: ModelLoadingError.self) { try StableDiffusionModel(path: tinySD1, configurationFolder: "/nonexistent-config-folder") }
    }
}
