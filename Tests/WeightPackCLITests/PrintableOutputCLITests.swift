import Foundation
import TestSupport
import Testing

/// A safetensors file with one F32 tensor of one value under `name` (given as JSON text, so
/// escapes such as \u001b become raw control characters once parsed).
private func fileWithTensor(named jsonName: String, in dir: String) throws -> String {
    var header = Array(#"{"\#(jsonName)":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.utf8)
    while header.count % 8 != 0 { header.append(0x20) }
    var bytes: [UInt8] = []
    var n = UInt64(header.count)
    for _ in 0..<8 { bytes.append(UInt8(n & 0xFF)); n >>= 8 }
    bytes += header + [0, 0, 0x80, 0x3F]
    let path = dir + "/hostile.safetensors"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

@Suite("names from files reach the terminal escaped")
struct PrintableOutputCLITests {
    @Test(
        "a terminal escape sequence or a newline in a tensor name is printed escaped",
        arguments: [
            ["inspect", "FILE"], ["diff", "FILE", "OTHER"], ["inspect", "FILE", "--stats"],
        ])
    func escaped(_ template: [String]) throws {
        let dir = try makeTemporaryFolder().path
        let file = try fileWithTensor(named: #"evil\u001b[2J\u001b]0;pwned\u0007\nfake line"#, in: dir)
        let other = try fileWithTensor(named: "plain", in: try makeTemporaryFolder().path)
        let result = try run(template.map { $0 == "FILE" ? file : $0 == "OTHER" ? other : $0 })
        #expect([0, 1].contains(result.status), "\(result.stderr)")
        for output in [result.stdout, result.stderr] {
            #expect(!output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 }, "raw control characters: \(output.debugDescription)")
            #expect(!output.split(separator: "\n").contains { $0.hasPrefix("fake line") }, "a name's newline started a line")
        }
        #expect(result.stdout.contains("evil"), "\(result.stdout)")
    }
}
