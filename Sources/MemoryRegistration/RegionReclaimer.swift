import MMUNotifier
import MemoryMonitor

/// What a `Registration` needs of its cache when it is released: drop a reference, and tear
/// the region down (deregister, unwatch, unsubscribe) once nobody holds it.
///
/// A separate object from `RegistrationCache` because the cache is the target of a weak
/// reference (its invalidation handler must not keep it alive), and Swift keeps the counts of
/// such an object in a side table: every retain and release of the cache itself takes the slow
/// path (measured: 42% of a counted hit). Registrations retain this one instead.
final class RegionReclaimer: Sendable {
    let srcu: SRCUDomain
    let space: AddressSpace
    let monitor: MemoryMonitor
    let counters: CacheCounters

    init(srcu: SRCUDomain, space: AddressSpace, monitor: MemoryMonitor, counters: CacheCounters) {
        self.srcu = srcu
        self.space = space
        self.monitor = monitor
        self.counters = counters
    }

    /// Waits while an invalidation is in flight in the cache's address space, so that a lookup
    /// made after `munmap` returned finds the index already without the old region. The
    /// monitor opens its window (sequence odd) before it reads the event that lets `munmap`
    /// return, and closes it only after the cache revoked what the event covers; a hit reads
    /// the sequence (a load, no write) and finds it even almost always.
    @inline(__always)
    func settleInvalidations() {
        while true {
            let sequence = space.invalidationSequence
            guard sequence & 1 == 1 else { return }
            space.waitWhileInvalidating(sequence)
        }
    }

    /// Drops one reference; the last one tears the entry down (deregisters its region).
    func put(_ entry: CacheEntry) {
        guard (try? entry.holders.put()) == true else { return }
        if srcu.isInsideReadSection {
            // Removing the subscription would have to wait for readers: do it after them.
            counters.pendingTeardowns.add(1, ordering: .relaxed)
            srcu.call { [self] in
                counters.pendingTeardowns.subtract(1, ordering: .relaxed)
                tearDown(entry)
            }
        } else {
            tearDown(entry)
        }
    }

    func releaseUncached(_ memory: any RegisteredMemory, length: Int) {
        if (try? memory.deregister()) != nil {
            counters.pinnedBytes.subtract(length, ordering: .relaxed)
            counters.registeredRegions.subtract(1, ordering: .relaxed)
        }
    }

    /// Deregisters the region, stops watching its range and removes its subscription. Once.
    func tearDown(_ entry: CacheEntry) {
        guard !entry.tornDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if (try? entry.memory.deregister()) != nil {
            counters.pinnedBytes.subtract(entry.length, ordering: .relaxed)
            counters.registeredRegions.subtract(1, ordering: .relaxed)
        }
        if entry.watched { try? monitor.unwatch(entry.subscription.range) }
        try? entry.subscription.remove()
    }
}
