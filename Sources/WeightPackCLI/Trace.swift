import ArgumentParser
import CheckpointFormats
import DiffusionEngine
import Foundation
import TensorCore

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Record the intermediate tensors of one generation in a safetensors file.",
        discussion: """
            Writes tokens.cond, tokens.uncond (I64 [77]), text.cond, text.uncond (F32 [77, D]),
            latents.initial, then for each loop iteration i (from 0) noise_pred.i (after guidance)
            and latents.i, and image (F32 [H, W, 3] in [0, 1], before 8-bit rounding).
            SDXL adds text.pooled.cond and text.pooled.uncond. Exit codes as for generate.
            """)

    @Argument(help: "The model (ckpt, safetensors, diffusers folder, .wpk).")
    var model: String

    @OptionGroup var generation: GenerationOptions

    @Option(name: .shortAndLong, help: "The safetensors file to write.")
    var output: String

    @Flag(help: "Replace the output if it exists.")
    var force = false

    @OptionGroup var inputOptions: InputOptions

    func validate() throws {
        guard generation.latents != nil else { throw ValidationError("trace needs --latents FILE (the initial noise)") }
    }

    func run() throws {
        try runReporting(verbose: inputOptions.verbose) {
            let engine = try EngineModel(path: model, inputOptions: inputOptions)
            let request = try generation.request(for: engine)
            var tensors: [OutputTensor] = []
            func add(_ name: String, _ tensor: FloatTensor, shape: [Int]? = nil) {
                tensors.append(TraceTensor.float(name, tensor.scalars, shape: shape ?? tensor.shape))
            }
            _ = try engine.pipeline.generate(request) { event in
                switch event {
                case .conditioning(let c):
                    tensors.append(TraceTensor.int64("tokens.cond", c.tokens.conditional))
                    tensors.append(TraceTensor.int64("tokens.uncond", c.tokens.unconditional))
                    let (n, d) = (c.embeddings.shape[1], c.embeddings.shape[2])
                    let values = c.embeddings.scalars
                    tensors.append(TraceTensor.float("text.cond", Array(values[(n * d)...]), shape: [n, d]))
                    tensors.append(TraceTensor.float("text.uncond", Array(values[..<(n * d)]), shape: [n, d]))
                    if let added = c.added {
                        let p = added.textEmbeddings.shape[1], v = added.textEmbeddings.scalars
                        tensors.append(TraceTensor.float("text.pooled.cond", Array(v[p...]), shape: [p]))
                        tensors.append(TraceTensor.float("text.pooled.uncond", Array(v[..<p]), shape: [p]))
                    }
                case .initialLatents(let l): add("latents.initial", l)
                case .step(let i, _, let noise, let latents):
                    add("noise_pred.\(i)", noise)
                    add("latents.\(i)", latents)
                case .image(let image): add("image", image)
                }
            }
            try SafetensorsWriter.write(tensors, metadata: ["format": "pt", "producer": "weightpack trace"], to: output, overwrite: force)
            print(output)
        }
    }
}

/// In-memory tensors for the trace file.
enum TraceTensor {
    static func float(_ name: String, _ values: [Float], shape: [Int]) -> OutputTensor {
        let bytes = values.withUnsafeBytes { TensorBytes(copying: $0) }
        return make(name, .f32, shape, bytes)
    }

    static func int64(_ name: String, _ values: [Int]) -> OutputTensor {
        let bytes = values.map { Int64($0).littleEndian }.withUnsafeBytes { TensorBytes(copying: $0) }
        return make(name, .i64, [values.count], bytes)
    }

    private static func make(_ name: String, _ dtype: DType, _ shape: [Int], _ bytes: TensorBytes) -> OutputTensor {
        let descriptor = TensorDescriptor(name: name, dtype: dtype, shape: Shape(shape), byteCount: bytes.count)
        let view = TensorView(descriptor: descriptor, bytes: bytes)
        return OutputTensor(name: name, dtype: dtype, shape: Shape(shape), sourceName: name, sourceDType: dtype, load: { view })
    }
}
