import MappedIO
import TensorCore

/// Writes a diffusers folder atomically: every file goes into a temporary folder beside the
/// target, which is renamed into place when complete.
public enum DiffusersFolderWriter {
    /// One weights file to write.
    public struct WeightsFile: Sendable {
        /// Relative path, e.g. `unet/diffusion_pytorch_model.safetensors`.
        public var path: String
        public var tensors: [OutputTensor]
        public init(path: String, tensors: [OutputTensor]) {
            self.path = path
            self.tensors = tensors
        }
    }

    /// Writes `weights` (safetensors, in the reference writer's order) and `files` (configs,
    /// tokenizer files) under `path`.
    public static func write(
        weights: [WeightsFile], files: [(path: String, bytes: [UInt8])], to path: String, overwrite: Bool,
        progress: (any ProgressReporter)? = nil
    ) throws(FormatError) {
        do {
            let folder = try AtomicFolder(path: path, overwrite: overwrite, marker: "model_index.json")
            for file in files { try folder.write(file.path, bytes: file.bytes) }
            for w in weights {
                let target = try folder.prepare(w.path)
                try SafetensorsWriter.write(SafetensorsWriter.referenceOrder(w.tensors), to: target, overwrite: true, progress: progress)
            }
            try folder.commit()
        } catch let error as IOError {
            throw FormatError(error)
        } catch let error as FormatError {
            throw error
        } catch {
            throw FormatError(.io, "\(error)", path: path)
        }
    }
}
