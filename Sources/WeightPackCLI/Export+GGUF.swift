import ArgumentParser
import CheckpointFormats
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore

/// `export --dtype`: the casts of ``DTypeChoice`` and, for GGUF, `q8_0`.
enum ExportDType: String, ExpressibleByArgument, CaseIterable, Sendable {
    case keep, f32, f16, bf16, q8_0

    /// The cast for safetensors and diffusers output (`q8_0` is refused before this is asked).
    var plain: DTypeChoice {
        switch self {
        case .keep, .q8_0: .keep
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        }
    }
}

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case safetensors, gguf
}

extension Export {
    var resolvedFormat: ExportFormat { format ?? (output.lowercased().hasSuffix(".gguf") ? .gguf : .safetensors) }

    /// Writes the model as a GGUF file for stable-diffusion.cpp: LDM names, reversed dimensions,
    /// Q8_0 blocks where stable-diffusion.cpp quantises, and the metadata it lacks.
    func writeGGUF(model: CanonicalModel) throws {
        guard model.isCanonical, let sourceLayout = model.layout else {
            throw CatalogError(.unmappable, "no Stable Diffusion layout recognised in \(input); GGUF export writes the LDM layout")
        }
        var ldm = self
        ldm.layout = .ldm
        let target = try ldm.targetLayout(model: model, sourceLayout: sourceLayout)
        let (recipes, omitted) = try NameMap.export(model.store.tensors, to: target, family: model.detection.family)
        for o in omitted { printError("weightpack: note: left out \(o.name): \(o.reason)") }
        let mapped = RemappedStore(base: model.store, recipes: recipes)
        let quantizedStore = model.store as? any QuantizedTensorStore
        var tensors: [GGUFWriter.Tensor] = []
        for r in recipes {
            let isInt8 = quantizedStore != nil && r.sources.count == 1 && ((try? quantizedStore!.quantizedTensor(named: r.sources[0])) ?? nil) != nil
            guard let type = ggufType(r, isInt8: isInt8) else {
                printError("weightpack: note: left out \(r.name): GGUF has no type for \(r.dtype.name)")
                continue
            }
            let name = r.name
            var tensor = GGUFWriter.Tensor(name: name, shape: r.shape, type: type, load: { try mapped.tensor(named: name) })
            if isInt8, [.copy, .reshape].contains(r.operation), let quantizedStore {
                let source = r.sources[0]
                tensor.quantized = { try quantizedStore.quantizedTensor(named: source) }
            }
            tensors.append(tensor)
        }
        var metadata: [(String, GGUFWriter.Value)] = [
            ("general.architecture", .string(model.detection.familyID.filter { $0.isLetter || $0.isNumber }.lowercased())),
            ("general.name", .string(String(input.split(separator: "/").last ?? Substring(input)))),
        ]
        let types = Set(tensors.map(\.type))
        if types.contains(.q8_0) {
            metadata.append(("general.quantization_version", .uint32(2)))
            metadata.append(("general.file_type", .uint32(7)))
        } else if types.contains(.f16) {
            metadata.append(("general.file_type", .uint32(1)))
        }
        metadata.append(("weightpack.tool", .string("weightpack \(WeightPackCommand.version)")))
        if let variant = model.detection.variant { metadata.append(("weightpack.variant", .string(variant))) }
        metadata.append(("weightpack.prediction_type", .string(model.detection.predictionType ?? "unknown")))
        metadata.append(("weightpack.dtype", .string(dtype.rawValue)))
        for (key, value) in try sourceRecord(model) { metadata.append(("weightpack.source.\(key)", .string(value))) }
        let summary = try GGUFWriter.write(tensors, metadata: metadata, to: output, overwrite: force, progress: TerminalProgress.make("export"))
        let counts = Dictionary(grouping: tensors, by: \.type).map { "\($0.value.count) \(ggufName($0.key))" }.sorted().joined(separator: ", ")
        var line = "wrote \(output): \(summary.tensorCount) tensors (\(counts)), \(formatBytes(summary.byteCount)), GGUF for stable-diffusion.cpp"
        if summary.repackedCount > 0 { line += "; \(summary.repackedCount) Q8_0 tensors copied from int8 blocks" }
        printError(line)
    }

    /// The GGUF type of one output tensor.
    func ggufType(_ r: TensorRecipe, isInt8: Bool) -> GGUFWriter.TensorType? {
        guard r.dtype.isConvertibleFloat else { return GGUFWriter.TensorType(exactly: r.dtype) }
        if r.shape.rank <= 1 { return .f32 }
        let q8able = r.shape.dimensions.last! % Q8_0.blockValues == 0 && stableDiffusionCppQuantizes(r.name)
        switch dtype {
        case .q8_0: return q8able ? .q8_0 : .f16
        case .keep:
            if isInt8 { return q8able && r.shape.rank == 2 ? .q8_0 : .f16 }
            return GGUFWriter.TensorType(exactly: r.dtype) ?? .f32
        default: return .f16
        }
    }

    /// stable-diffusion.cpp's `tensor_should_be_converted` name rules (besides the row length).
    func stableDiffusionCppQuantizes(_ name: String) -> Bool {
        !(name.hasSuffix(".bias") || name.hasSuffix(".scale") || name.contains("time_embed.") || name.contains("label_emb.") || name.contains("embedding"))
    }

    /// The source's name, format and SHA-256: recorded at conversion for a `.wpk`, computed otherwise.
    func sourceRecord(_ model: CanonicalModel) throws -> [(String, String)] {
        if let wpk = model.source as? WPKFile, let source = wpk.headerMetadata["source"]?.objectValue {
            var out: [(String, String)] = []
            for key in ["name", "format", "sha256"] { if let v = source[key]?.stringValue { out.append((key, v)) } }
            if let size = source["size"]?.doubleValue { out.append(("size", String(Int(size)))) }
            return out
        }
        var out = [("name", String(input.split(separator: "/").last ?? Substring(input))), ("format", model.source.formatName)]
        if let digest = try SourceDigest.start(path: input)?.wait() {
            out.append(("sha256", digest.sha256))
            out.append(("size", String(digest.size)))
        }
        return out
    }

    func ggufName(_ t: GGUFWriter.TensorType) -> String {
        switch t {
        case .f32: "F32"
        case .f16: "F16"
        case .bf16: "BF16"
        case .q8_0: "Q8_0"
        case .f64: "F64"
        case .i8: "I8"
        case .i16: "I16"
        case .i32: "I32"
        case .i64: "I64"
        }
    }
}
