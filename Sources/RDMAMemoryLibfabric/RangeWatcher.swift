import NotifierEngine
import Monitors

/// What the libfabric monitor needs of a memory monitor: watch a range, or say why it cannot,
/// and undo one watch. `MemoryMonitor` in the library; a fake in unit tests of the protocol.
protocol RangeWatcher: Sendable {
    func watch(_ range: AddressRange) -> MemoryMonitor.WatchResult
    func unwatch(_ range: AddressRange)
}

/// The process's monitor as a `RangeWatcher`: shared memory is refused (DESIGN.md, "What
/// userfaultfd cannot see"), so libfabric does not cache it.
struct MonitorWatcher: RangeWatcher {
    let monitor: MemoryMonitor

    func watch(_ range: AddressRange) -> MemoryMonitor.WatchResult { monitor.watch(range) }

    /// An unwatch can fail only for a range no watch counted, or a monitor shut down or failed,
    /// and then there is nothing left to undo.
    func unwatch(_ range: AddressRange) { try? monitor.unwatch(range) }
}
