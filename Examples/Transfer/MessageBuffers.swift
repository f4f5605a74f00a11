#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping

/// Where the client's message buffers come from, the two ways real programs churn memory.
///
/// - `malloc`: one `malloc` per message, `free` once its write completes. glibc serves large
///   blocks from fresh `mmap`s at first and from its heap later, trimming and growing it: the
///   same addresses keep coming back over memory that may or may not be the same.
/// - `pool`: a pool of window-many buffers in one mapping that is mapped anew (`mmap(MAP_FIXED)`
///   over it: the same addresses, new pages) every `remapEvery` messages.
enum BufferChoice: String, CaseIterable, Sendable {
    case malloc, pool
}

final class MessageBuffers {
    private let messageSize: Int
    private let pool: AnonymousMapping?
    private let remapEvery: Int
    private(set) var remaps = 0
    private var handedOut = 0

    init(_ choice: BufferChoice, messageSize: Int, window: Int, remapEvery: Int) throws {
        self.messageSize = messageSize
        self.remapEvery = remapEvery
        pool = choice == .pool ? try AnonymousMapping(length: window * messageSize) : nil
    }

    /// A buffer of `length` bytes for window slot `slot`.
    func acquire(length: Int, slot: Int) throws -> UnsafeMutableRawBufferPointer {
        handedOut += 1
        if let pool {
            return UnsafeMutableRawBufferPointer(rebasing: pool.bytes[slot * messageSize..<slot * messageSize + length])
        }
        guard let memory = malloc(length) else {
            throw TransferError("malloc(\(length)) failed: \(String(cString: strerror(errno)))")
        }
        return UnsafeMutableRawBufferPointer(start: memory, count: length)
    }

    /// Gives a buffer back once its write completed.
    func release(_ buffer: UnsafeMutableRawBufferPointer) {
        if pool == nil { free(buffer.baseAddress) }
    }

    /// Whether the pool is due to be mapped anew (every `remapEvery` buffers handed out).
    var remapDue: Bool { pool != nil && remapEvery > 0 && handedOut >= remapEvery * (remaps + 1) }

    /// Maps the pool anew: call only while no buffer of it is in flight.
    func remap() throws {
        try pool?.replaceInPlace()
        remaps += 1
    }
}
