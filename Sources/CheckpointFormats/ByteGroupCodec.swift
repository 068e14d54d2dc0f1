import CZstd
import TensorCore

/// Byte-grouped zstd compression of floating-point tensors (the `zstd-bytegroup` encoding of
/// `Formats/wpk.md`): plane `k` gathers byte `k` of every element, then one zstd frame.
enum ByteGroupCodec {
    /// Splits `source` (elements of `width` bytes) into planes and compresses them.
    /// Returns `nil` when the result would not be smaller than the input.
    static func encode(_ source: UnsafeRawBufferPointer, width: Int, level: Int32) throws(FormatError) -> OwnedBuffer? {
        let size = source.count
        guard size > 0, size % width == 0 else { return nil }
        let planes = OwnedBuffer(byteCount: size)
        split(source, width: width, into: planes.mutableBytes)
        let bound = ZSTD_compressBound(size)
        let output = OwnedBuffer(byteCount: bound)
        let written = ZSTD_compress(output.mutableBytes.baseAddress, bound, planes.mutableBytes.baseAddress, size, level)
        if ZSTD_isError(written) != 0 {
            throw FormatError(.corruptData, "zstd compression failed: \(String(cString: ZSTD_getErrorName(written)))")
        }
        guard written < size else { return nil }
        // Shrink to the compressed size.
        let result = OwnedBuffer(byteCount: written)
        result.mutableBytes.baseAddress!.copyMemory(from: output.mutableBytes.baseAddress!, byteCount: written)
        return result
    }

    /// Decompresses a frame of exactly `size` bytes and interleaves the planes back.
    static func decode(_ stored: UnsafeRawBufferPointer, width: Int, size: Int) throws(FormatError) -> OwnedBuffer {
        guard width > 0, size % width == 0 else { throw FormatError(.corruptData, "bad byte-group width") }
        // zstd regenerates at most 128 KiB per block of at least 4 bytes (an RLE block), so a
        // frame cannot expand more than 32 768-fold: refuse before allocating what it claims.
        let (bound, overflow) = stored.count.multipliedReportingOverflow(by: 32_768)
        guard overflow || size <= bound else {
            throw FormatError(.corruptData, "a \(stored.count)-byte zstd frame cannot hold \(size) bytes")
        }
        let declared = ZSTD_getFrameContentSize(stored.baseAddress, stored.count)
        guard declared == UInt64(size) else {
            throw FormatError(.corruptData, "compressed frame declares \(declared) bytes, header says \(size)")
        }
        guard let planes = OwnedBuffer(checkedByteCount: size), let output = OwnedBuffer(checkedByteCount: size) else {
            throw FormatError(.corruptData, "cannot allocate \(size) bytes for a compressed tensor: more than this machine can hold")
        }
        let got = ZSTD_decompress(planes.mutableBytes.baseAddress, size, stored.baseAddress, stored.count)
        if ZSTD_isError(got) != 0 {
            throw FormatError(.corruptData, "zstd decompression failed: \(String(cString: ZSTD_getErrorName(got)))")
        }
        guard got == size else { throw FormatError(.corruptData, "decompressed \(got) bytes, expected \(size)") }
        join(UnsafeRawBufferPointer(planes.mutableBytes), width: width, count: size / width, into: output.mutableBytes)
        return output
    }

    static func split(_ source: UnsafeRawBufferPointer, width: Int, into planes: UnsafeMutableRawBufferPointer) {
        let count = source.count / width
        let src = source.baseAddress!, dst = planes.baseAddress!
        switch width {
        case 2:
            for i in 0..<count {
                let v = src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)
                dst.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: i, as: UInt8.self)
                dst.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: count &+ i, as: UInt8.self)
            }
        case 4:
            for i in 0..<count {
                let v = src.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self)
                for k in 0..<4 {
                    dst.storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))), toByteOffset: k &* count &+ i, as: UInt8.self)
                }
            }
        default:
            for i in 0..<count {
                for k in 0..<width {
                    dst.storeBytes(of: src.load(fromByteOffset: i &* width &+ k, as: UInt8.self), toByteOffset: k &* count &+ i, as: UInt8.self)
                }
            }
        }
    }

    static func join(_ planes: UnsafeRawBufferPointer, width: Int, count: Int, into output: UnsafeMutableRawBufferPointer) {
        let src = planes.baseAddress!, dst = output.baseAddress!
        switch width {
        case 2:
            for i in 0..<count {
                let lo = UInt16(src.load(fromByteOffset: i, as: UInt8.self))
                let hi = UInt16(src.load(fromByteOffset: count &+ i, as: UInt8.self))
                dst.storeBytes(of: lo | hi << 8, toByteOffset: i &* 2, as: UInt16.self)
            }
        case 4:
            for i in 0..<count {
                var v: UInt32 = 0
                for k in 0..<4 { v |= UInt32(src.load(fromByteOffset: k &* count &+ i, as: UInt8.self)) << (8 * UInt32(k)) }
                dst.storeBytes(of: v, toByteOffset: i &* 4, as: UInt32.self)
            }
        default:
            for i in 0..<count {
                for k in 0..<width {
                    dst.storeBytes(of: src.load(fromByteOffset: k &* count &+ i, as: UInt8.self), toByteOffset: i &* width &+ k, as: UInt8.self)
                }
            }
        }
    }
}
