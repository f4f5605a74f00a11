#if canImport(Glibc)
import Glibc
#endif
import CLibfabricMonitor
import NotifierEngine
import Monitors
import Synchronization

// The operations the C half (libfabric_monitor.c) forwards: libfabric's monitor calls, the
// explicit invalidation and the counters of rdmamemory_libfabric.h. Plain functions with C
// names, because libfabric calls them from its own threads with no Swift context. A `size_t`
// arrives as `Int`: it is taken back with `UInt(bitPattern:)` (the same 64 bits), never `UInt(_:)`,
// which traps on a length above `Int.max`; such a length then fails `AddressRange`'s checks.

extension LibfabricMonitor {
    /// The process's libfabric monitor, over the process's one engine and monitor (created
    /// when libfabric first starts it: with the first domain that uses a cache).
    static let shared = LibfabricMonitor(
        space: MemoryMonitor.shared.space,
        watcher: MonitorWatcher(monitor: MemoryMonitor.shared),
        notify: { range in rdmamemory_lf_notify(range.start, Int(bitPattern: range.length ?? 0)) })
}

@_cdecl("rdmamemory_lf_swift_start")
func libfabricMonitorStart() -> Int32 {
    let monitor = MemoryMonitor.shared
    // The hit path gets the object straight from the C half (see libfabricMonitorValid).
    rdmamemory_lf_set_monitor(Unmanaged.passUnretained(LibfabricMonitor.shared).toOpaque(), LibfabricMonitor.shared.memo)
    switch monitor.mode {
    case .userfaultfd:
        break
    case .explicitOnly(let reason), .failed(let reason):
        // Not an error for libfabric (it registers everything uncached then), but a program
        // that expected a cache must hear why it has none.
        reportOnce("rdmamemory: libfabric will cache no registration: \(reason)\n")
    }
    return 0
}

@_cdecl("rdmamemory_lf_swift_stop")
func libfabricMonitorStop() { LibfabricMonitor.shared.stop() }

@_cdecl("rdmamemory_lf_swift_subscribe")
func libfabricMonitorSubscribe(_ address: UInt, _ length: Int) -> Int32 {
    LibfabricMonitor.shared.subscribe(start: address, length: UInt(bitPattern: length))
}

@_cdecl("rdmamemory_lf_swift_unsubscribe")
func libfabricMonitorUnsubscribe(_ address: UInt, _ length: Int) {
    LibfabricMonitor.shared.unsubscribe(start: address, length: UInt(bitPattern: length))
}

/// libfabric's hit path, for ranges the memo could not vouch for. `monitor` is `LibfabricMonitor.shared` as start handed it to the C
/// half: a global constant, never released, so borrowing it without a retain is sound (and a
/// retain and release are two atomic read-modify-writes on every hit).
@_cdecl("rdmamemory_lf_swift_valid")
func libfabricMonitorValid(_ monitor: UnsafeRawPointer, _ address: UInt, _ length: Int) -> Bool {
    Unmanaged<LibfabricMonitor>.fromOpaque(monitor)._withUnsafeGuaranteedRef {
        $0.isValid(start: address, length: UInt(bitPattern: length))
    }
}

@_cdecl("rdmamemory_lf_swift_invalidate")
func explicitInvalidate(_ address: UInt, _ length: Int) -> Int32 {
    guard length != 0, let range = try? AddressRange(start: address, length: UInt(bitPattern: length)) else { return -EINVAL }
    MemoryMonitor.shared.invalidate(range, cause: .reused)
    return 0
}

@_cdecl("rdmamemory_lf_swift_statistics")
func libfabricMonitorStatistics(_ out: UnsafeMutablePointer<rdmamemory_libfabric_statistics>) {
    let c = LibfabricMonitor.shared.counters
    out.pointee = rdmamemory_libfabric_statistics(
        subscribed: c.subscribed.load(ordering: .relaxed), refused: c.refused.load(ordering: .relaxed),
        unsubscribed: c.unsubscribed.load(ordering: .relaxed),
        valid: c.valid.load(ordering: .relaxed) + rdmamemory_lf_memo_hits(LibfabricMonitor.shared.memo),
        invalid: c.invalid.load(ordering: .relaxed), notified: c.notified.load(ordering: .relaxed))
}

private let reported = Atomic<Bool>(false)

/// Writes `message` to stderr the first time only.
private func reportOnce(_ message: String) {
    if reported.exchange(true, ordering: .relaxed) { return }
    var bytes = Array(message.utf8)
    _ = write(STDERR_FILENO, &bytes, bytes.count)
}
