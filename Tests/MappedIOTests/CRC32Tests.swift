import MappedIO
import Testing

@Suite("CRC32")
struct CRC32Tests {
    /// The catalogue check value of CRC-32/ISO-HDLC (the zip and PNG CRC): "123456789" → 0xCBF43926.
    @Test func checkValue() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    }

    /// PNG's IEND chunk stores the CRC of its type alone, AE 42 60 82 in every PNG file.
    @Test func pngIEND() {
        #expect(CRC32.checksum(Array("IEND".utf8)) == 0xAE42_6082)
        #expect(CRC32.checksum([]) == 0)
    }

    @Test func bufferAndArrayAgree() {
        let bytes: [UInt8] = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(bytes.withUnsafeBytes { CRC32.checksum($0) } == CRC32.checksum(bytes))
    }
}
