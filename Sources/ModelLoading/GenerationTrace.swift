import CheckpointFormats
import DiffusionEngine
import TensorCore

/// The intermediate tensors of one generation, gathered from the pipeline's events and written
/// as a safetensors file: `tokens.cond`, `tokens.uncond` (I64 [77]), `text.cond`, `text.uncond`
/// (F32 [77, D]), SDXL's `text.pooled.cond` / `.uncond`, `latents.initial`, per loop iteration i
/// `noise_pred.i` (after guidance) and `latents.i`, and `image` (F32 [H, W, 3] in [0, 1]).
public final class GenerationTrace {
    public private(set) var tensors: [OutputTensor] = []

    public init() {}

    /// Records one event (pass this as the pipeline's observer).
    public func observe(_ event: StableDiffusionPipeline.Event) {
        func add(_ name: String, _ tensor: FloatTensor, shape: [Int]? = nil) {
            tensors.append(TraceTensor.float(name, tensor.scalars, shape: shape ?? tensor.shape))
        }
        switch event {
        case .schedule: break
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

    /// Writes the tensors recorded so far as a safetensors file; its metadata names the UNet's
    /// arithmetic (`compute`).
    public func write(to path: String, overwrite: Bool, compute: ComputePrecision = .f32) throws {
        try SafetensorsWriter.write(
            tensors, metadata: ["format": "pt", "producer": "weightpack trace", "compute": compute.rawValue], to: path, overwrite: overwrite)
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
