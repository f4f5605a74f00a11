import Synchronization

/// What the monitor thread has seen, for tests, diagnostics and the benchmark.
public struct MonitorStatistics: Sendable, Equatable {
    /// poll() wake-ups that opened an invalidation window.
    public var wakeups: Int
    /// Wake-ups whose read() found nothing (the window closed empty).
    public var emptyWakeups: Int
    public var unmapEvents: Int
    public var removeEvents: Int
    public var remapEvents: Int
    /// Write-protect faults; never expected (no page is ever write-protected): each is resolved.
    public var unexpectedFaults: Int
    /// Wake-ups that found the worker's queue full and merged their ranges into one (coarser)
    /// invalidation instead of waiting for the worker.
    public var overflows: Int
    /// Watches served without an ioctl: in validated granules, with no unmap or remap there
    /// since (`KnownMemory`).
    public var watchesWithoutIoctl: Int
    /// `munmap` and `mmap(MAP_FIXED)` calls over watched memory handled in the calling thread
    /// (`MemoryHooks`): each is an invalidation without an event.
    public var interceptedUnmaps: Int
    /// `UFFDIO_UNREGISTER` calls those unmaps issued: one per disjoint registered run they cut
    /// (consecutive whole granules are one run).
    public var interceptedUnregisters: Int
    /// `mprotect`, `shmat` and `shmdt` calls over registered memory seen by the hooks (changes
    /// userfaultfd never reports).
    public var interceptedChanges: Int
    /// Watches of a buffer in a mapping the hooked `mmap` made: one register or none, no probe,
    /// no query (`GranuleWatch.watchKnownMemory`).
    public var watchesOfKnownMappings: Int
    /// Private anonymous mappings the hooked `mmap` made in registered granules (the hooks
    /// record those made anywhere: `knowsMapping(of:)`).
    public var mappingsSeenMade: Int
    /// All events read.
    public var events: Int { unmapEvents + removeEvents + remapEvents + unexpectedFaults }
}

/// Counters the monitor thread bumps with relaxed atomics (no lock, no allocation: they are
/// updated on the path between wake-up and read()).
final class MonitorCounters: Sendable {
    let wakeups = Atomic<Int>(0)
    let emptyWakeups = Atomic<Int>(0)
    let unmapEvents = Atomic<Int>(0)
    let removeEvents = Atomic<Int>(0)
    let remapEvents = Atomic<Int>(0)
    let unexpectedFaults = Atomic<Int>(0)
    let overflows = Atomic<Int>(0)
    let watchesWithoutIoctl = Atomic<Int>(0)
    let interceptedUnmaps = Atomic<Int>(0)
    let interceptedUnregisters = Atomic<Int>(0)
    let interceptedChanges = Atomic<Int>(0)
    let watchesOfKnownMappings = Atomic<Int>(0)
    let mappingsSeenMade = Atomic<Int>(0)

    var snapshot: MonitorStatistics {
        MonitorStatistics(wakeups: wakeups.load(ordering: .relaxed),
                          emptyWakeups: emptyWakeups.load(ordering: .relaxed),
                          unmapEvents: unmapEvents.load(ordering: .relaxed),
                          removeEvents: removeEvents.load(ordering: .relaxed),
                          remapEvents: remapEvents.load(ordering: .relaxed),
                          unexpectedFaults: unexpectedFaults.load(ordering: .relaxed),
                          overflows: overflows.load(ordering: .relaxed),
                          watchesWithoutIoctl: watchesWithoutIoctl.load(ordering: .relaxed),
                          interceptedUnmaps: interceptedUnmaps.load(ordering: .relaxed),
                          interceptedUnregisters: interceptedUnregisters.load(ordering: .relaxed),
                          interceptedChanges: interceptedChanges.load(ordering: .relaxed),
                          watchesOfKnownMappings: watchesOfKnownMappings.load(ordering: .relaxed),
                          mappingsSeenMade: mappingsSeenMade.load(ordering: .relaxed))
    }
}
