import CFileSync
import Foundation
import MappedIO
import Testing

/// A fresh folder under the system's temporary folder.
private func scratchFolder() throws -> String {
    let path = NSTemporaryDirectory() + "weightpack-mappedio-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func contents(_ path: String) -> [String] {
    ((try? FileManager.default.subpathsOfDirectory(atPath: path)) ?? []).sorted()
}

private func write(_ text: String, to path: String) throws {
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

private func read(_ path: String) -> String? {
    FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
}

private func expectIOError(_ code: IOError.Code, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("no error; expected \(code)", sourceLocation: sourceLocation)
    } catch let error as IOError {
        #expect(error.code == code, "got \(error.code): \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("atomic file writer")
struct AtomicFileWriterTests {
    @Test("a committed file appears whole and nothing else is left in the folder")
    func commits() throws {
        let folder = try scratchFolder()
        let target = folder + "/out.bin"
        let writer = try AtomicFileWriter(path: target, overwrite: false)
        try writer.write(Array("hello".utf8))
        #expect(contents(folder).isEmpty, "an unnamed temporary shows nothing while writing")
        try writer.commit()
        #expect(read(target) == "hello")
        #expect(contents(folder) == ["out.bin"])
    }

    @Test("a writer dropped without commit leaves nothing")
    func abandons() throws {
        let folder = try scratchFolder()
        do {
            let writer = try AtomicFileWriter(path: folder + "/out.bin", overwrite: true)
            try writer.write(Array("partial".utf8))
        }
        #expect(contents(folder).isEmpty)
    }

    @Test("an existing file is refused without overwrite and replaced with it")
    func existing() throws {
        let folder = try scratchFolder()
        let target = folder + "/out.bin"
        try write("old", to: target)
        expectIOError(.exists) { _ = try AtomicFileWriter(path: target, overwrite: false) }
        let writer = try AtomicFileWriter(path: target, overwrite: true)
        try writer.write(Array("new".utf8))
        try writer.commit()
        #expect(read(target) == "new")
        #expect(contents(folder) == ["out.bin"])
    }

    @Test("a file that appears while writing is not replaced without overwrite")
    func appearsMeanwhile() throws {
        let folder = try scratchFolder()
        let target = folder + "/out.bin"
        let writer = try AtomicFileWriter(path: target, overwrite: false)
        try writer.write(Array("mine".utf8))
        try write("theirs", to: target)
        expectIOError(.exists) { try writer.commit() }
        #expect(read(target) == "theirs")
    }

    @Test("a name of 252 bytes (the temporary's name must still fit in 255)", arguments: [252, 255])
    func longName(length: Int) throws {
        let folder = try scratchFolder()
        let name = String(repeating: "m", count: length - 4) + ".wpk"
        let writer = try AtomicFileWriter(path: folder + "/" + name, overwrite: false)
        try writer.write(Array("x".utf8))
        try writer.commit()
        #expect(contents(folder) == [name])
    }

    @Test("a folder, or a name ending in /, is not a file to write", arguments: ["", "/", "/sub", "/x.wpk/"])
    func folderTarget(suffix: String) throws {
        let folder = try scratchFolder()
        try FileManager.default.createDirectory(atPath: folder + "/sub", withIntermediateDirectories: true)
        for overwrite in [false, true] {
            expectIOError(.outputIsFolder) { _ = try AtomicFileWriter(path: folder + suffix, overwrite: overwrite) }
        }
        #expect(contents(folder) == ["sub"])
    }

    @Test("an input of this process is never replaced: the same path, a hard link, a symbolic link")
    func refusesInputs() throws {
        let folder = try scratchFolder()
        let input = folder + "/model.safetensors"
        try write("weights", to: input)
        try FileManager.default.linkItem(atPath: input, toPath: folder + "/hard.safetensors")
        try FileManager.default.createSymbolicLink(atPath: folder + "/soft.safetensors", withDestinationPath: input)
        let mapped = try MappedFile(path: input)
        for target in [input, folder + "/hard.safetensors", folder + "/soft.safetensors", folder + "/./model.safetensors"] {
            expectIOError(.outputIsInput) { _ = try AtomicFileWriter(path: target, overwrite: true) }
        }
        #expect(read(input) == "weights")
        withExtendedLifetime(mapped) {}
    }

    @Test("a file is an input only while it is open: once its reader is gone it may be written again")
    func inputOnlyWhileOpen() throws {
        let folder = try scratchFolder()
        let input = folder + "/model.safetensors"
        try write("weights", to: input)
        do {
            let mapped = try MappedFile(path: input)
            expectIOError(.outputIsInput) { _ = try AtomicFileWriter(path: input, overwrite: true) }
            withExtendedLifetime(mapped) {}
        }
        let writer = try AtomicFileWriter(path: input, overwrite: true)
        try writer.write(Array("new".utf8))
        try writer.commit()
        #expect(read(input) == "new")
    }

    @Test("a FIFO is refused at once, not waited on")
    func fifo() throws {
        let folder = try scratchFolder()
        #expect(mkfifo(folder + "/pipe", 0o644) == 0)
        expectIOError(.notRegularFile) { _ = try MappedFile(path: folder + "/pipe") }
    }

    @Test("an input opened after the writer was made is still not replaced at commit")
    func refusesInputsAtCommit() throws {
        let folder = try scratchFolder()
        let input = folder + "/late.safetensors"
        try write("weights", to: input)
        let writer = try AtomicFileWriter(path: input, overwrite: true)
        try writer.write(Array("other".utf8))
        let mapped = try MappedFile(path: input)
        expectIOError(.outputIsInput) { try writer.commit() }
        #expect(read(input) == "weights")
        withExtendedLifetime(mapped) {}
    }

    /// Bytes `0 ..< count` of a pattern that differs from chunk to chunk (so a chunk written
    /// twice or out of place would show).
    private static func pattern(_ count: Int, from start: Int) -> [UInt8] {
        (start..<(start + count)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
    }

    @Test("with write-back started every few KiB, the committed file holds every byte, a rewritten header included")
    func writesBackAsItGoes() throws {
        let folder = try scratchFolder()
        let target = folder + "/out.bin"
        // A 4 KiB buffer and 16 KiB chunks: hundreds of write-back calls, through buffered writes,
        // writes larger than the buffer and an output buffer filled in place.
        let writer = try AtomicFileWriter(path: target, overwrite: false, bufferSize: 4096, writeBackChunk: 16 << 10)
        var expected: [UInt8] = []
        var sizes = [1, 4095, 4096, 10_000, 3, 70_000]
        for round in 0..<40 {
            let size = sizes[round % sizes.count]
            let bytes = Self.pattern(size, from: expected.count)
            if round % 3 == 2 && size <= 4096 {
                try writer.withUnsafeOutputBuffer(count: size) { out in out.copyBytes(from: bytes) }
            } else {
                try writer.write(bytes)
            }
            expected += bytes
            sizes.swapAt(round % sizes.count, (round * 7) % sizes.count)
        }
        // The header rewritten after its bytes have gone to the disk, as the writers do.
        let header: [UInt8] = Array("HEADER".utf8)
        try header.withUnsafeBytes { try writer.overwrite($0, at: 0) }
        expected.replaceSubrange(0..<header.count, with: header)
        #expect(writer.position == expected.count)
        // A request covers what gathered since the last one: under 16 KiB plus one flush (a
        // full buffer, or a write larger than it), so at most 16 KiB + 70 000 + 4096 bytes.
        #expect(writer.writeBackRequests >= expected.count / ((16 << 10) + 70_000 + 4096))
        #expect(writer.writeBackRequests > 0)
        try writer.commit()
        let written = try #require(FileManager.default.contents(atPath: target))
        #expect(written.count == expected.count)
        #expect(Array(written) == expected)
        #expect(contents(folder) == ["out.bin"])
    }

    @Test("a writer dropped after its write-back started still leaves nothing")
    func abandonsAfterWriteBack() throws {
        let folder = try scratchFolder()
        do {
            let writer = try AtomicFileWriter(path: folder + "/out.bin", overwrite: true, bufferSize: 4096, writeBackChunk: 8192)
            try writer.write(Self.pattern(100_000, from: 0))
        }
        #expect(contents(folder).isEmpty)
    }

    @Test("starting write-back refuses a negative offset, an empty range and a closed descriptor")
    func writeBackArguments() throws {
        #expect(wp_start_write_back(0, -1, 10) == -1)
        #expect(errno == EINVAL)
        #expect(wp_start_write_back(0, 0, 0) == -1)
        #expect(errno == EINVAL)
        #expect(wp_start_write_back(-1, 0, 4096) == -1)
        #expect(errno == EBADF)
        // An open file: accepted.
        let folder = try scratchFolder()
        let path = folder + "/f.bin"
        try write(String(repeating: "x", count: 8192), to: path)
        let fd = open(path, O_RDWR)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(wp_start_write_back(fd, 0, 8192) == 0)
    }
}

@Suite("atomic folder writer")
struct AtomicFolderTests {
    @Test("a new folder appears whole")
    func newFolder() throws {
        let parent = try scratchFolder()
        let folder = try AtomicFolder(path: parent + "/model", overwrite: false, marker: "model_index.json")
        try folder.write("model_index.json", bytes: Array("{}".utf8))
        try folder.write("unet/config.json", bytes: Array("{}".utf8))
        let during = try FileManager.default.contentsOfDirectory(atPath: parent)
        #expect(during.count == 1 && during[0].hasPrefix(".model.tmp-"), "\(during)")
        try folder.commit()
        #expect(contents(parent) == ["model", "model/model_index.json", "model/unet", "model/unet/config.json"])
    }

    @Test("an abandoned folder leaves nothing")
    func abandons() throws {
        let parent = try scratchFolder()
        do {
            let folder = try AtomicFolder(path: parent + "/model", overwrite: false)
            try folder.write("a/b.json", bytes: [1])
        }
        #expect(contents(parent).isEmpty)
    }

    @Test("an existing folder is refused without overwrite")
    func existing() throws {
        let parent = try scratchFolder()
        try write("{}", to: parent + "/model/model_index.json")
        expectIOError(.exists) { _ = try AtomicFolder(path: parent + "/model", overwrite: false, marker: "model_index.json") }
    }

    @Test("a folder of someone else's files is refused even with overwrite, and left as it was")
    func refusesForeignFolder() throws {
        let parent = try scratchFolder()
        try write("\\documentclass{article}", to: parent + "/home/thesis.tex")
        try write("secret", to: parent + "/home/.ssh/id_ed25519")
        let before = contents(parent)
        expectIOError(.refusedTarget) { _ = try AtomicFolder(path: parent + "/home", overwrite: true, marker: "model_index.json") }
        expectIOError(.refusedTarget) { _ = try AtomicFolder(path: parent + "/home/thesis.tex", overwrite: true, marker: "model_index.json") }
        #expect(contents(parent) == before)
        #expect(read(parent + "/home/.ssh/id_ed25519") == "secret")
    }

    @Test("writing into a folder of the same kind replaces its files and leaves every other file alone")
    func merges() throws {
        let parent = try scratchFolder()
        let target = parent + "/model"
        try write("old index", to: target + "/model_index.json")
        try write("old config", to: target + "/unet/config.json")
        try write("notes", to: target + "/README.md")
        try write("keep", to: target + "/unet/diffusion_pytorch_model.fp16.safetensors")
        let folder = try AtomicFolder(path: target + "/", overwrite: true, marker: "model_index.json")
        try folder.write("model_index.json", bytes: Array("new index".utf8))
        try folder.write("unet/config.json", bytes: Array("new config".utf8))
        try folder.write("vae/config.json", bytes: Array("vae".utf8))
        try folder.commit()
        #expect(read(target + "/model_index.json") == "new index")
        #expect(read(target + "/unet/config.json") == "new config")
        #expect(read(target + "/vae/config.json") == "vae")
        #expect(read(target + "/README.md") == "notes")
        #expect(read(target + "/unet/diffusion_pytorch_model.fp16.safetensors") == "keep")
        #expect(contents(parent).allSatisfy { !$0.contains(".tmp-") })
    }

    @Test("a folder holding an input of this process is refused")
    func refusesFolderHoldingInput() throws {
        let parent = try scratchFolder()
        let target = parent + "/model"
        try write("{}", to: target + "/model_index.json")
        try write("weights", to: target + "/unet/diffusion_pytorch_model.safetensors")
        let mapped = try MappedFile(path: target + "/unet/diffusion_pytorch_model.safetensors")
        expectIOError(.outputIsInput) { _ = try AtomicFolder(path: target, overwrite: true, marker: "model_index.json") }
        #expect(read(target + "/unet/diffusion_pytorch_model.safetensors") == "weights")
        withExtendedLifetime(mapped) {}
    }

    @Test("a symbolic link inside the target is not written through, and nothing is moved")
    func refusesLinkedSubfolder() throws {
        let parent = try scratchFolder()
        let target = parent + "/model"
        try write("{}", to: target + "/model_index.json")
        try write("elsewhere", to: parent + "/elsewhere/config.json")
        try FileManager.default.createSymbolicLink(atPath: target + "/unet", withDestinationPath: parent + "/elsewhere")
        let folder = try AtomicFolder(path: target, overwrite: true, marker: "model_index.json")
        try folder.write("model_index.json", bytes: Array("new".utf8))
        try folder.write("unet/config.json", bytes: Array("new".utf8))
        expectIOError(.refusedTarget) { try folder.commit() }
        #expect(read(parent + "/elsewhere/config.json") == "elsewhere")
        #expect(read(target + "/model_index.json") == "{}")
    }

    @Test("the temporary folder of a long name fits in a file name")
    func longName() throws {
        let parent = try scratchFolder()
        let name = String(repeating: "d", count: 250)
        let folder = try AtomicFolder(path: parent + "/" + name, overwrite: false)
        try folder.write("x", bytes: [1])
        try folder.commit()
        #expect(contents(parent) == [name, name + "/x"])
    }
}
