#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping

/// The bytes the client sends: a file mapped read-only, or a data set of random bytes
/// (getrandom) made in memory, as if generated into a file first.
final class DataSet {
    let bytes: UnsafeRawBufferPointer
    let name: String
    private let generated: AnonymousMapping?
    private let fileMapping: (address: UnsafeMutableRawPointer, length: Int)?

    /// `size` random bytes.
    init(generating size: Int) throws {
        let mapping = try AnonymousMapping(length: size, populate: false)
        let random = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        guard random >= 0 else { throw TransferError("open(\"/dev/urandom\") failed: \(String(cString: strerror(errno)))") }
        defer { close(random) }
        var filled = 0
        while filled < size, let base = mapping.bytes.baseAddress {
            let piece = read(random, base + filled, size - filled)
            guard piece > 0 else {
                if piece < 0 && errno == EINTR { continue }
                throw TransferError("read(/dev/urandom, \(size - filled) bytes) failed: \(String(cString: strerror(errno)))")
            }
            filled += piece
        }
        generated = mapping
        fileMapping = nil
        bytes = UnsafeRawBufferPointer(start: mapping.bytes.baseAddress, count: size)
        name = "\(ByteCount.format(size)) of random bytes"
    }

    /// The file at `path`, mapped read-only.
    init(file path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw TransferError("open(\"\(path)\") failed: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            throw TransferError("fstat(\"\(path)\") failed: \(String(cString: strerror(errno)))")
        }
        guard status.st_mode & S_IFMT == S_IFREG else { throw TransferError("\(path) is not a regular file") }
        let length = Int(status.st_size)
        guard length > 0 else { throw TransferError("\(path) is empty: nothing to send") }
        guard let address = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0), address != MAP_FAILED else {
            throw TransferError("mmap(\"\(path)\", \(length) bytes) failed: \(String(cString: strerror(errno)))")
        }
        generated = nil
        fileMapping = (address, length)
        bytes = UnsafeRawBufferPointer(start: address, count: length)
        name = "\(path) (\(ByteCount.format(length)))"
    }

    deinit {
        if let fileMapping { munmap(fileMapping.address, fileMapping.length) }
    }
}
