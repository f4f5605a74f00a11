#if canImport(Glibc)
import Glibc
#endif

/// Turns an `ibv_reg_mr` EFAULT into words: the kernel says only "bad address" for a NULL
/// pointer, an unmapped range, a hole in the middle of a range and write access to read-only
/// memory alike. On that (rare) failure path we read `/proc/self/maps` to say which it was.
enum MappingProbe {
    struct Mapping {
        var start: UInt
        var end: UInt
        var writable: Bool
    }

    static func explain(_ error: VerbsError, address: UInt, length: Int, access: AccessFlags) -> VerbsError {
        guard error.errno == .badAddress else { return error }
        var explained = error
        if address == 0 {
            explained.argument = "address: NULL"
            explained.detail = "the buffer's address is NULL"
            return explained
        }
        let end = address + UInt(length)
        var cursor = address
        for mapping in mappings() where mapping.end > cursor && mapping.start < end {
            if mapping.start > cursor { break }
            if access.needsWritableMemory && !mapping.writable {
                explained.argument = "access: \(access)"
                explained.detail = "write access asked for read-only memory at 0x\(hex(cursor))"
                explained.isWriteToReadOnlyMemory = true
                return explained
            }
            cursor = mapping.end
            if cursor >= end { return error }
        }
        explained.detail = cursor == address
            ? "nothing is mapped at 0x\(hex(address))"
            : "the range has an unmapped page at 0x\(hex(cursor))"
        return explained
    }

    /// The process's mappings in address order, from `/proc/self/maps`.
    static func mappings() -> [Mapping] {
        guard let file = fopen("/proc/self/maps", "r") else { return [] }
        defer { fclose(file) }
        var result: [Mapping] = []
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", maxSplits: 2)
            guard fields.count >= 2 else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16)
            else { continue }
            result.append(Mapping(start: start, end: end, writable: fields[1].dropFirst().first == "w"))
        }
        return result
    }

    private static func hex(_ value: UInt) -> String { String(value, radix: 16) }
}
