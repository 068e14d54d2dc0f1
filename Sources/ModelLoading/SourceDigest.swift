import CheckpointFormats
import Dispatch
import MappedIO
import Synchronization
import TensorCore

/// The SHA-256 and size of an input file, computed on a background thread while the main
/// thread converts.
///
/// Every digest registers itself; `BackgroundWork.cancelAndWaitForAll()` (called by
/// `runReporting` on every way out of a command) stops and joins them, so the process never
/// exits while a thread is still inside libcrypto.
public final class SourceDigest: @unchecked Sendable {
    public struct Value: Sendable { public var size: Int; public var sha256: String }
    public struct Cancelled: Error {}
    private let group = DispatchGroup()
    private var result: Result<Value, any Error>?
    private let cancelled = Atomic<Bool>(false)

    /// Starts hashing `path` if it is a regular file; `nil` for folders and index files.
    public static func start(path: String) -> SourceDigest? {
        guard let kind = try? ModelInput.detect(path), kind != .diffusers, kind != .folder, kind != .shardedSafetensors else { return nil }
        let digest = SourceDigest()
        BackgroundWork.register(digest)
        digest.group.enter()
        DispatchQueue.global().async {
            defer { digest.group.leave() }
            digest.result = Result {
                let file = try MappedFile(path: path)
                let sha = SHA256Digest()
                let chunk = 64 << 20
                var offset = 0
                while offset < file.size {
                    guard !digest.cancelled.load(ordering: .relaxed) else { throw Cancelled() }
                    let end = min(file.size, offset + chunk)
                    file.bytes(in: offset..<end)!.withUnsafeBytes { sha.update($0) }
                    file.adviseDone(with: offset..<end)
                    offset = end
                }
                return Value(size: file.size, sha256: sha.finalizeHex())
            }
        }
        return digest
    }

    /// The size of a regular file, without reading it.
    public static func size(of path: String) -> Int? {
        guard let kind = try? ModelInput.detect(path), kind != .diffusers, kind != .folder else { return nil }
        return (try? MappedFile(path: path))?.size
    }

    /// The digest, once computed.
    public func wait() throws -> Value {
        group.wait()
        return try result!.get()
    }

    /// Stops the hashing at the next chunk and waits for the thread to finish.
    public func cancelAndWait() {
        cancelled.store(true, ordering: .relaxed)
        group.wait()
    }
}

/// Background threads a command started, joined before the command returns.
public enum BackgroundWork {
    private static let digests = Locked<[SourceDigest]>([])

    static func register(_ digest: SourceDigest) {
        digests.withLock { $0.append(digest) }
    }

    /// Cancels and joins every registered digest.
    public static func cancelAndWaitForAll() {
        let pending = digests.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for digest in pending { digest.cancelAndWait() }
    }
}
