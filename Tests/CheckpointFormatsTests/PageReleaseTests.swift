import CheckpointFormats
import Foundation
import MappedIO
import TensorCore
import Testing

/// `TensorBytes.releasePages()`, which the engine calls after each layer: a mapped file's pages
/// are dropped from the resident set and read back unchanged on the next access; heap memory,
/// which `MADV_DONTNEED` would zero, is never touched.
@Suite("page release after use")
struct PageReleaseTests {
    @Test func mappedTensorsReadBackUnchangedAndHeapBytesAreLeftAlone() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("weightpack-pages-\(UUID().uuidString).bin")
        defer { try? FileManager.default.removeItem(at: url) }
        let count = 3 << 20  // three pages' worth many times over, not page-aligned at the ends
        let values = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        try Data(values).write(to: url)
        let file = try MappedFile(path: url.path)
        let view = try #require(file.bytes(in: 4097..<(count - 123)))
        #expect(view.canReleasePages)
        let before = view.withUnsafeBytes { Array($0) }
        view.releasePages()
        #expect(view.withUnsafeBytes { Array($0) } == before)
        #expect(before == Array(values[4097..<(count - 123)]))

        let heap = values.withUnsafeBytes { TensorBytes(copying: UnsafeRawBufferPointer(rebasing: $0[0..<(1 << 20)])) }
        #expect(!heap.canReleasePages)
        heap.releasePages()
        #expect(heap.withUnsafeBytes { Array($0) } == Array(values[0..<(1 << 20)]))
    }
}
