#if canImport(Glibc)
import Glibc
#endif
import CUCXMonitor
import NotifierEngine
import Monitors
import Synchronization

// The operations the C half (ucx_monitor.c) forwards. Plain functions with C names, because UCX
// calls them from its own threads with no Swift context. A `size_t` arrives as `Int` and is taken
// back with `UInt(bitPattern:)` (the same 64 bits), never `UInt(_:)`, which traps on a length
// above `Int.max`; such a length then fails `AddressRange`'s checks.

extension UCXEventSource {
    /// The process's UCX event source, over the process's one engine and monitor, registered as a
    /// notifier of its address space when UCX registers its first region. Nil when it could not
    /// be: every UCX registration is then reported unmapped at once (UCX caches nothing).
    static let shared: UCXEventSource? = {
        let source = UCXEventSource(monitor: MemoryMonitor.shared)
        do {
            try source.monitor.space.register(source)
        } catch {
            say("rdmamemory: UCX will keep no registration cached: RDMAMemory's engine refused its notifier (\(error))\n")
            return nil
        }
        rdmamemory_ucx_set_window(source.monitor.space.windowSequenceAddress)
        switch source.monitor.mode {
        case .userfaultfd:
            break
        case .explicitOnly(let reason), .failed(let reason):
            // Not an error for UCX (it registers again each time), but a program that expected a
            // cache must hear why it has none.
            say("rdmamemory: UCX will keep no registration cached: \(reason)\n")
        }
        return source
    }()
}

@_cdecl("rdmamemory_ucx_swift_start")
func ucxEventSourceStart() -> Int32 {
    _ = UCXEventSource.shared
    return 0
}

@_cdecl("rdmamemory_ucx_swift_watch")
func ucxEventSourceWatch(_ address: UInt, _ length: Int) -> Int32 {
    guard length > 0, let source = UCXEventSource.shared,
          let range = try? AddressRange(start: address, length: UInt(bitPattern: length)) else { return 0 }
    return source.watch(range) ? 1 : 0
}

@_cdecl("rdmamemory_ucx_swift_unwatch_later")
func ucxEventSourceUnwatchLater(_ address: UInt, _ length: Int) {
    guard let range = try? AddressRange(start: address, length: UInt(bitPattern: length)) else { return }
    UCXEventSource.shared?.unwatchLater(range)
}

@_cdecl("rdmamemory_ucx_swift_registered")
func ucxEventSourceRegistered(_ mr: UnsafeRawPointer, _ address: UInt, _ length: Int) {
    guard let range = try? AddressRange(start: address, length: UInt(bitPattern: length)) else { return }
    UCXEventSource.shared?.registered(key: UInt(bitPattern: mr), range)
}

@_cdecl("rdmamemory_ucx_swift_deregistering")
func ucxEventSourceDeregistering(_ mr: UnsafeRawPointer) {
    UCXEventSource.shared?.deregistering(key: UInt(bitPattern: mr))
}

/// A UCX lookup found a window open: waits until it closed. From inside an invalidation callback
/// (the window may be the one it runs in) it does not wait: the engine refuses, and the lookup
/// goes on (UCM has the callback's own report queued already).
@_cdecl("rdmamemory_ucx_swift_wait_window")
func ucxEventSourceWaitWindow(_ sequence: UInt64) {
    try? UCXEventSource.shared?.monitor.space.waitWhileWindowOpen(sequence)
}

/// Writes `message` to stderr.
private func say(_ message: String) {
    var bytes = Array(message.utf8)
    _ = write(STDERR_FILENO, &bytes, bytes.count)
}
