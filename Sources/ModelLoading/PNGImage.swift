import CPNG
import DiffusionEngine
import MappedIO

/// Small outputs written whole.
public enum OutputFile {
    /// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
    public static func write(_ bytes: [UInt8], to path: String, overwrite: Bool) throws {
        let writer = try AtomicFileWriter(path: path, overwrite: overwrite)
        try writer.write(bytes)
        try writer.commit()
    }
}

/// 8-bit RGB PNG encoding with libpng's simplified API, plus UTF-8 text chunks (iTXt).
public enum PNGImage {
    public struct EncodingError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Encodes an `[H, W, 3]` image in [0, 1] (rounded as `(x * 255).round()`, diffusers' `numpy_to_pil`
    /// truncates instead; the difference is at most one level).
    public static func encode(_ image: FloatTensor, text: [(String, String)] = []) throws -> [UInt8] {
        let s = image.shape
        guard s.count == 3, s[2] == 3 else { throw EncodingError(description: "PNG encoding needs an [H, W, 3] image, not \(s)") }
        let pixels = image.scalars.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
        return try encode(rgb: pixels, width: s[1], height: s[0], text: text)
    }

    public static func encode(rgb: [UInt8], width: Int, height: Int, text: [(String, String)] = []) throws -> [UInt8] {
        var descriptor = png_image()
        descriptor.version = png_uint_32(PNG_IMAGE_VERSION)
        descriptor.width = png_uint_32(width)
        descriptor.height = png_uint_32(height)
        descriptor.format = png_uint_32(PNG_FORMAT_RGB)
        var size: png_alloc_size_t = 0
        let stride = png_int_32(width * 3)
        guard rgb.withUnsafeBytes({ png_image_write_to_memory(&descriptor, nil, &size, 0, $0.baseAddress, stride, nil) }) != 0, size > 0 else {
            throw EncodingError(description: "libpng could not size the PNG: \(message(descriptor))")
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let ok = bytes.withUnsafeMutableBytes { out in
            rgb.withUnsafeBytes { png_image_write_to_memory(&descriptor, out.baseAddress, &size, 0, $0.baseAddress, stride, nil) }
        }
        guard ok != 0 else { throw EncodingError(description: "libpng failed: \(message(descriptor))") }
        bytes.removeSubrange(Int(size)...)
        // Insert the text chunks after IHDR (8-byte signature + 25-byte IHDR chunk).
        var chunks: [UInt8] = []
        for (key, value) in text { chunks += chunk("iTXt", Array(key.utf8) + [0, 0, 0, 0, 0] + Array(value.utf8)) }
        bytes.insert(contentsOf: chunks, at: 33)
        return bytes
    }

    /// Encodes `image` and writes it to `path` atomically (temporary file, fsync, rename).
    public static func write(_ image: FloatTensor, text: [(String, String)] = [], to path: String, overwrite: Bool = false) throws {
        try OutputFile.write(try encode(image, text: text), to: path, overwrite: overwrite)
    }

    private static func message(_ image: png_image) -> String {
        withUnsafeBytes(of: image.message) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
    }

    private static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typeBytes = Array(type.utf8)
        var out: [UInt8] = []
        let n = UInt32(data.count)
        out += [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        out += typeBytes + data
        let crc = CRC32.checksum(typeBytes + data)
        out += [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)]
        return out
    }
}
