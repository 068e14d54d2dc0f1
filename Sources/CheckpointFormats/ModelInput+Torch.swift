import TensorCore

extension ModelInput {
    /// Opens a PyTorch archive. Replaced by the torch reader (issue 3).
    static func openTorch(_ path: String, options: Options) throws(FormatError) -> any TensorStore {
        throw FormatError(.unrecognizedFormat, "reading PyTorch checkpoints is not supported yet", path: path)
    }
}
