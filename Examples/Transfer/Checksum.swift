import CZlib

/// The CRC-32 (zlib's, the one `gzip` and Ethernet use) of a message: the client sends it as the
/// write's immediate value and the server recomputes it over the bytes that landed, so every
/// byte of every message is checked without a second copy of the data set on the server.
enum Checksum {
    static func crc32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc = CZlib.crc32(0, nil, 0)
        var rest = bytes
        // zlib takes a 32-bit length: feed larger buffers in pieces.
        while let base = rest.baseAddress, !rest.isEmpty {
            let piece = min(rest.count, 1 << 30)
            crc = CZlib.crc32(crc, base.assumingMemoryBound(to: Bytef.self), uInt(piece))
            rest = UnsafeRawBufferPointer(rebasing: rest[piece...])
        }
        return UInt32(truncatingIfNeeded: crc)
    }
}
