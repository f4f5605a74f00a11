import MemoryMapping
import Verbs

/// RDMA WRITEs of a known pattern from this process to itself over the real device, and a count
/// of where the bytes went: the only evidence that a registration names the application's
/// current pages is data that arrives in them.
///
/// Every write gets a completion queue and an RC queue pair connected to itself of its own, so a
/// write that fails (and moves its QP to the error state) cannot spoil the next row.
final class LoopbackWriter {
    let domain: ProtectionDomain
    let options: QueuePair.ConnectOptions
    /// How long one write may take before it is reported as lost (emulated rxe is slow).
    let timeout: Duration
    private let source: AnonymousMapping
    private let sourceRegion: MemoryRegion

    /// The most one write sends.
    let capacity: Int

    init(domain: ProtectionDomain, capacity: Int, options: QueuePair.ConnectOptions = .init(),
         timeout: Duration = .seconds(10)) throws {
        self.domain = domain
        self.capacity = capacity
        self.options = options
        self.timeout = timeout
        source = try AnonymousMapping(length: capacity)
        source.fill(Self.pattern)
        sourceRegion = try domain.registerMemory(source.bytes, access: .rdma)
    }

    /// Byte `index` of what every write sends: never zero (fresh pages are zeros, so a zero byte
    /// would count as landed when nothing did) and not repeating within a page.
    static func pattern(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index % 251 + 1) }

    /// Where one write's bytes went.
    struct Outcome: Equatable, Sendable {
        var bytesWritten: Int
        /// Bytes of `target` equal to the pattern at their offset.
        var bytesLanded: Int
        /// Bytes of `target` that are no longer zero.
        var bytesChanged: Int
    }

    /// Zeroes `target`, RDMA-WRITEs `target.count` bytes of the pattern to `remoteAddress`
    /// through `rkey`, waits (bounded) for the completion, and counts what reached `target`.
    ///
    /// - Throws: `VerbsError` when a verbs call fails, the completion does not arrive within
    ///   `timeout`, or the work request completed with an error status.
    func write(to remoteAddress: UInt, rkey: UInt32, observing target: UnsafeMutableRawBufferPointer) throws -> Outcome {
        guard target.count > 0, target.count <= capacity else {
            throw VerbsError(call: "ibv_post_send", argument: "length: \(target.count)", errno: .invalidArgument,
                             detail: "the check writes 1...\(capacity) bytes")
        }
        target.initializeMemory(as: UInt8.self, repeating: 0)
        let queue = try CompletionQueue(context: domain.context, capacity: 16)
        let queuePair = try QueuePair(protectionDomain: domain, sendCompletionQueue: queue)
        try queuePair.connectToItself(options: options)
        try queuePair.postWrite([ScatterGatherElement(region: sourceRegion, length: target.count)],
                                remoteAddress: UInt64(remoteAddress), rkey: rkey, id: 1)
        try queue.waitForSuccess(of: 1, timeout: timeout)
        return Self.count(target)
    }

    /// What `target` holds compared with the pattern.
    static func count(_ target: UnsafeRawBufferPointer) -> Outcome {
        var landed = 0
        var changed = 0
        for (index, byte) in target.enumerated() {
            if byte == pattern(index) { landed += 1 }
            if byte != 0 { changed += 1 }
        }
        return Outcome(bytesWritten: target.count, bytesLanded: landed, bytesChanged: changed)
    }

    static func count(_ target: UnsafeMutableRawBufferPointer) -> Outcome { count(UnsafeRawBufferPointer(target)) }
}
