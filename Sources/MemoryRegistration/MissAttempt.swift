import Monitors
import NotifierEngine

/// What a miss has done that must be undone unless it publishes: the entry's subscription in
/// the interval tree, the room it reserved under the limits, and this attempt's watch of the
/// range. One place undoes them (the deinit), as `InvalidationWindow` closes its window: a miss
/// that throws, returns uncached or retries cannot leave a subscription in the tree, room
/// reserved for good or a granule watched for nobody.
///
/// The reservation and the subscription last for the whole miss; a watch lasts one attempt
/// (`unwatch()` before a retry: the next attempt watches again after its own `readBegin`).
/// `publish` hands all three to the entry: from then on its teardown undoes them.
struct MissAttempt: ~Copyable {
    let core: CacheCore
    let entry: CacheEntry
    /// The bytes reserved under the limits, once `reserve` made room.
    private var reservedBytes: Int?
    private(set) var watched = false
    private var published = false

    /// Creates the entry for `[start, start + length)` and inserts its subscription (step 1 of
    /// the miss).
    init(core: CacheCore, start: UInt, length: Int) throws(RegistrationError) {
        do {
            let entry = try CacheEntry(core: core, range: AddressRange(start: start, length: UInt(length)))
            try entry.insert()
            self.core = core
            self.entry = entry
        } catch {
            throw .shutDown(reason: "\(error)")
        }
    }

    /// Makes room under the limits once (`CacheCore.makeRoom`); later calls do nothing.
    mutating func reserve(bytes: Int) throws(RegistrationError) {
        guard reservedBytes == nil else { return }
        try core.makeRoom(bytes: bytes)
        reservedBytes = bytes
    }

    /// Watches the range through the cache's monitor; nil when the range must be registered
    /// uncached, with the reason. Without a monitor nothing is watched (explicit invalidation).
    mutating func watch() -> String? {
        guard let monitor = core.monitor else { return nil }
        switch monitor.watch(entry.range, allowingSharedMemory: core.options.cachesSharedMemory) {
        case .watched:
            watched = true
            return nil
        case .uncached(let reason):
            return reason.description
        }
    }

    /// Undoes this attempt's watch (before a retry, or when the miss gives up).
    mutating func unwatch() {
        guard watched else { return }
        watched = false
        try? core.monitor?.unwatch(entry.range)
    }

    /// Under the state lock: the entry now holds the watch and the room (its teardown gives
    /// them back), and nothing is undone.
    mutating func publish(_ state: inout CacheCore.State) {
        entry.watched = watched
        if let reservedBytes { core.counters.unreserve(bytes: reservedBytes) }
        reservedBytes = nil
        published = true
        core.publish(entry, &state)
    }

    /// Ends the attempt: what it did is undone unless it published.
    consuming func end() {}

    deinit {
        guard !published else { return }
        if watched { try? core.monitor?.unwatch(entry.range) }
        // Without waiting: inside a callback a remove that waits would throw and leave the
        // subscription in the tree for good.
        try? entry.removeWithoutWaiting()
        if let reservedBytes { core.unreserve(bytes: reservedBytes) }
    }
}
