import Foundation
import TestSupport
import Testing

/// Every regular file under `folder` with its bytes, to prove a command left them alone.
private func snapshot(_ folder: String) -> [String: Data] {
    var files: [String: Data] = [:]
    for path in (try? FileManager.default.subpathsOfDirectory(atPath: folder)) ?? [] {
        if let data = FileManager.default.contents(atPath: folder + "/" + path) { files[path] = data }
    }
    return files
}

@Suite("no command destroys what the user did not ask it to write")
struct DataSafetyCLITests {
    @Test("export --force into a folder of the user's files is refused and the folder is untouched")
    func exportRefusesForeignFolder() throws {
        let dir = try makeTemporaryFolder().path
        let home = dir + "/home"
        try FileManager.default.createDirectory(atPath: home + "/.ssh", withIntermediateDirectories: true)
        try Data("\\documentclass{article}".utf8).write(to: URL(fileURLWithPath: home + "/thesis.tex"))
        try Data("secret".utf8).write(to: URL(fileURLWithPath: home + "/.ssh/id_ed25519"))
        let before = snapshot(home)
        let result = try run(["export", tinyModel, home, "--layout", "diffusers", "--force"])
        #expect(result.status == 73, "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(snapshot(home) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["home"])
    }

    @Test("export --force into an earlier export replaces its files and keeps the user's")
    func exportReplacesOwnFiles() throws {
        let dir = try makeTemporaryFolder().path
        let folder = dir + "/sd"
        #expect(try run(["export", tinyModel, folder, "--layout", "diffusers"]).status == 0)
        try Data("my notes".utf8).write(to: URL(fileURLWithPath: folder + "/NOTES.md"))
        try Data("{}".utf8).write(to: URL(fileURLWithPath: folder + "/unet/config.json"))
        let result = try run(["export", tinyModel, folder, "--layout", "diffusers", "--force"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(FileManager.default.contents(atPath: folder + "/NOTES.md") == Data("my notes".utf8))
        let config = try #require(FileManager.default.contents(atPath: folder + "/unet/config.json"))
        #expect(config.count > 100, "unet/config.json was written again")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["sd"])
    }

    @Test(
        "an output that is the input is refused with 73 whatever --force says",
        arguments: [
            ["convert", "IN", "IN", "--force"], ["convert", "IN", "IN", "--dtype", "f16", "--force"],
            ["export", "IN", "IN", "--force"], ["export", "IN", "IN", "--dtype", "f16", "--force"],
            ["convert", "IN", "LINK", "--force"], ["export", "IN", "HARD", "--force"],
            ["export", "IN", "DIR", "--layout", "diffusers", "--force"],
        ])
    func outputIsInput(_ template: [String]) throws {
        let dir = try makeTemporaryFolder().path
        let folder = dir + "/model"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let input = folder + "/model.safetensors"
        try FileManager.default.copyItem(atPath: tinyModel, toPath: input)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.safetensors", withDestinationPath: input)
        try FileManager.default.linkItem(atPath: input, toPath: dir + "/hard.safetensors")
        try Data("{}".utf8).write(to: URL(fileURLWithPath: folder + "/model_index.json"))
        let original = try Data(contentsOf: URL(fileURLWithPath: tinyModel))
        let arguments = template.map {
            switch $0 {
            case "IN": input
            case "LINK": dir + "/link.safetensors"
            case "HARD": dir + "/hard.safetensors"
            case "DIR": folder
            default: $0
            }
        }
        let result = try run(arguments)
        #expect(result.status == 73, "\(arguments): \(result.stderr)")
        #expect(result.stderr.contains("input"), "\(result.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: input)) == original)
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: folder)) == ["model.safetensors", "model_index.json"])
    }

    @Test("a .wpk exported onto itself is refused")
    func wpkOntoItself() throws {
        let dir = try makeTemporaryFolder().path
        let wpk = dir + "/m.wpk"
        #expect(try run(["convert", tinyModel, wpk]).status == 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: wpk))
        let result = try run(["export", wpk, wpk, "--force"])
        #expect(result.status == 73, "\(result.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: wpk)) == before)
        #expect(try run(["check", wpk]).status == 0)
    }

    @Test("an output name of 252 bytes is written, and no temporary is left")
    func longOutputName() throws {
        let dir = try makeTemporaryFolder().path
        let name = String(repeating: "n", count: 248) + ".wpk"
        let result = try run(["convert", tinyModel, dir + "/" + name])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == [name])
    }

    @Test("an existing folder or a name ending in / as a file output is 73", arguments: ["sub", "x.wpk/"])
    func folderAsFileOutput(_ name: String) throws {
        let dir = try makeTemporaryFolder().path
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        for extra in [[], ["--force"]] {
            let result = try run(["convert", tinyModel, dir + "/" + name] + extra)
            #expect(result.status == 73, "\(name) \(extra): \(result.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["sub"])
    }

    @Test("verify --report naming a file or a folder of other files is 73, one line, nothing changed", arguments: ["file", "folder"])
    func verifyReportTarget(_ kind: String) throws {
        let dir = try makeTemporaryFolder().path
        let target = dir + "/target"
        if kind == "file" {
            try Data("keep me".utf8).write(to: URL(fileURLWithPath: target))
        } else {
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            try Data("keep me".utf8).write(to: URL(fileURLWithPath: target + "/notes.txt"))
        }
        let before = snapshot(dir)
        let result = try run(["verify", tinyModel, tinyModel, "--steps", "2", "--size", "64", "--report", target])
        #expect(result.status == 73, "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").filter { $0.hasPrefix("weightpack: error") }.count == 1, "\(result.stderr)")
        #expect(!result.stderr.contains("NSCocoaErrorDomain"))
        #expect(snapshot(dir) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["target"])
    }

    @Test("verify --report writes a new folder, and writes again over its own report")
    func verifyReportRewrite() throws {
        let dir = try makeTemporaryFolder().path
        let target = dir + "/report"
        for _ in 0..<2 {
            let result = try run(["verify", tinyModel, tinyModel, "--steps", "2", "--size", "64", "--report", target])
            #expect(result.status == 0, "\(result.stderr)")
        }
        #expect(
            Set(try FileManager.default.contentsOfDirectory(atPath: target)) == [
                "reference.png", "candidate.png", "difference.png", "comparison.png", "report.json",
            ])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["report"])
    }
}
