extension AnonymousMapping {
    /// Sets byte `i` to `value(i)` for every byte of the mapping.
    public func fill(_ value: (Int) -> UInt8) {
        let bytes = self.bytes
        for index in bytes.indices { bytes[index] = value(index) }
    }

    /// How many bytes satisfy `predicate`.
    public func count(where predicate: (UInt8) -> Bool) -> Int {
        bytes.reduce(0) { $0 + (predicate($1) ? 1 : 0) }
    }

    /// Whether both mappings hold the same bytes over this one's length.
    public func equals(_ other: AnonymousMapping) -> Bool {
        guard other.length >= length, let mine = bytes.baseAddress, let theirs = other.bytes.baseAddress else {
            return false
        }
        return memcmp(mine, theirs, length) == 0
    }
}
#if canImport(Glibc)
import Glibc
#endif
