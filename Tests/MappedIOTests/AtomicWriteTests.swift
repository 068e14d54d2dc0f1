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
