#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Keeps device calls of the cache's teardowns out of process exit.
///
/// `exit()` runs the handlers registered with `atexit` first, then the destructors of the
/// shared libraries: librdmacm's closes the device contexts and frees the protection domains it
/// opened (those of `rdma_cm` connections). A reclaim thread still deregistering then would call
/// `ibv_dereg_mr` on freed objects. So the first cache registers a handler that closes this gate
/// before any destructor runs and waits, bounded, for the deregistrations in flight; a teardown
/// that comes later skips the device call (the kernel releases every pin of an exiting process).
enum ProcessExitGate {
    /// Deregistrations in flight, and `closedBit` once the process is exiting.
    private static let state = Atomic<Int>(0)
    private static let closedBit = 1 << 62

    /// Registers the exit handler, once (the first cache does this).
    static let installed: Void = {
        _ = atexit { ProcessExitGate.close() }
    }()

    /// Runs `deviceCall` unless the process is exiting; true when it ran.
    static func whileOpen(_ deviceCall: () throws -> Void) rethrows -> Bool {
        if state.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue & closedBit != 0 {
            state.wrappingSubtract(1, ordering: .releasing)
            return false
        }
        defer { state.wrappingSubtract(1, ordering: .releasing) }
        try deviceCall()
        return true
    }

    /// Closes the gate and waits up to about a second for the calls in flight (a device call
    /// that hangs must not hang the exit).
    static func close() {
        state.bitwiseOr(closedBit, ordering: .acquiringAndReleasing)
        for _ in 0..<100_000 where state.load(ordering: .acquiring) & ~closedBit != 0 {
            sched_yield()
        }
    }

    static var isClosed: Bool { state.load(ordering: .acquiring) & closedBit != 0 }
}
