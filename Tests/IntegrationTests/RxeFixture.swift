import Foundation
import Synchronization
import MemoryMapping
import Testing
import Verbs

/// Real soft-RoCE, when the test runs under `scripts/rxe-vm run` (which sets RDMAMEMORY_RXE=1
/// and creates rxe0). Elsewhere these tests are skipped with that reason, never passed blindly;
/// with the variable set and no device they fail.
enum Rxe {
    static var isAvailable: Bool { ProcessInfo.processInfo.environment["RDMAMEMORY_RXE"] == "1" }
    static var deviceName: String { ProcessInfo.processInfo.environment["RDMAMEMORY_RXE_DEVICE"] ?? "rxe0" }
    static let skipReason: Comment = "needs real soft-RoCE: run through scripts/rxe-vm run (sets RDMAMEMORY_RXE=1)"
}

/// One device, one PD, one CQ and an RC QP connected to itself: RDMA WRITE and READ then move
/// data between buffers of this process through the real device.
struct Loopback {
    let context: DeviceContext
    let domain: ProtectionDomain
    let queue: CompletionQueue
    let queuePair: QueuePair

    init(options: QueuePair.ConnectOptions = .init()) throws {
        context = try DeviceContext(name: Rxe.deviceName)
        domain = try ProtectionDomain(context: context)
        queue = try CompletionQueue(context: context)
        queuePair = try QueuePair(protectionDomain: domain, sendCompletionQueue: queue)
        try queuePair.connectToItself(options: options)
    }

    /// RDMA WRITE all of `source` to `remote`/`rkey` and wait for its completion.
    func write(from source: MemoryRegion, to remote: UInt, rkey: UInt32, id: UInt64 = 1) throws -> WorkCompletion {
        try queuePair.postWrite([ScatterGatherElement(region: source)], remoteAddress: UInt64(remote), rkey: rkey, id: id)
        return try queue.waitForCompletions(1)[0]
    }

    /// RDMA READ `remote`/`rkey` into all of `target` and wait for its completion.
    func read(into target: MemoryRegion, from remote: UInt, rkey: UInt32, id: UInt64 = 2) throws -> WorkCompletion {
        try queuePair.postRead([ScatterGatherElement(region: target)], remoteAddress: UInt64(remote), rkey: rkey, id: id)
        return try queue.waitForCompletions(1)[0]
    }
}

/// Runs `body` on a thread of its own (blocking verbs calls must not sit on the few threads of
/// Swift's cooperative pool) and hands its result back through `join()`.
final class BackgroundThread<Value: Sendable>: Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let result = Mutex<Result<Value, any Error>?>(nil)

    init(_ body: @escaping @Sendable () throws -> Value) {
        Thread { [self] in
            let outcome = Result { try body() }
            result.withLock { $0 = outcome }
            done.signal()
        }.start()
    }

    /// Waits for the thread (bounded) and returns what it returned, or throws what it threw.
    func join(timeout: DispatchTime = .now() + 60) throws -> Value {
        guard done.wait(timeout: timeout) == .success else { throw JoinTimeout() }
        return try result.withLock { try $0?.get() } ?? { throw JoinTimeout() }()
    }

    struct JoinTimeout: Error {}
}

/// Where iproute2 put a tool (`/usr/bin/rdma` on Debian 12, `/sbin/ip` on others).
func systemTool(_ name: String) -> URL {
    let folders = ["/usr/bin", "/usr/sbin", "/sbin", "/bin"]
    let found = folders.first { FileManager.default.isExecutableFile(atPath: "\($0)/\(name)") } ?? "/usr/bin"
    return URL(fileURLWithPath: "\(found)/\(name)")
}
