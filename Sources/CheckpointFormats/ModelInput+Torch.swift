import TensorCore

extension ModelInput {
    /// Opens a PyTorch archive (zip or legacy) without executing its pickle.
    static func openTorch(_ path: String, options: Options) throws(FormatError) -> any TensorStore {
        try TorchCheckpoint(path: path, allowUnsafeGlobals: options.allowUnsafeGlobals, maximumExpansion: options.maximumExpansion)
    }
}
