import NotifierEngine
import Monitors
import Synchronization
import Verbs

/// # An entry's life
///
/// Every step below moves an entry (`CacheEntry`) one row down; nothing moves it back up. The
/// kernel tells its interval notifier's life the same way, beside the code (mm/mmu_notifier.c).
///
/// | state | step (function) | thread | lock | kept alive by | guaranteed from here on |
/// | --- | --- | --- | --- | --- | --- |
/// | inserted | `MissAttempt.init`: `CacheEntry`, `insert` | missing | the tree's | the interval tree | every overlapping invalidation calls it and moves its sequence (a registration that raced one is never published) |
/// | published | `MissAttempt.publish` → `publish` | missing | state | the tree; the index's reference (`holders` 1) plus one per `Registration` | lookups and the CLOCK hand find it (index) |
/// | revoked | `invalidate` → `revoke` → `unpublish`, `retire` (also `close`) | invalidating: a hooked call's caller, the monitor's worker, an explicit caller | state | the cache's retain, taken in `unpublish` | no lookup finds it; holders see `isRevoked`; no invalidation calls it (out of the tree) |
/// | evicted | `evictAtHand` → `unpublish`, then `retireEvictions` for the sweep's batch | missing | state | the cache's retain | `holders` frozen at 0: no lookup can take a reference |
/// | retired | `retire` (pending → sealed → ready) or `retireEvictions` (evicted) | same | teardown | `TeardownLists` | one grace period to wait: every reader that could see it in the index has left |
/// | torn down | `tearDown` (evicted: `reapRetired`, `tearDownEvicted`, `runBatch`'s leftovers; revoked: the last `put`) | missing, reclaim, or last holder's | none across `ibv_dereg_mr` | `freeable` | deregistered once (`tornDown`), unwatched, bytes uncounted; a refused deregistration keeps it in `failed` for a retry |
/// | freed | `releaseFreeable`, or `finishTeardown` on a missing thread | missing | teardown (to take it) | nothing | the memory goes back to the allocator on the thread that allocates entries |
///
/// A revoked entry waits for two things: the grace period (readers inside `withRegistration`)
/// drops the index's reference, and the last `Registration` drops its own; whichever `put` is
/// last tears it down. An evicted entry had no holder (frozen), so its grace period is all it
/// waits for. A miss that does not publish never reaches "published": `MissAttempt`'s deinit
/// takes its subscription out of the tree and gives back its room and its watch.
extension CacheCore {
    // MARK: - Published, revoked, evicted (state lock held)

    /// Makes `entry` findable (the index, which the CLOCK hand walks too).
    func publish(_ entry: CacheEntry, _ state: inout State) {
        entry.published = true
        index.insert(entry)
        counters.cachedRegions.add(1, ordering: .relaxed)
    }

    /// Takes `entry` out of the index, and out of the address space's interval tree.
    ///
    /// Why the tree too, now and not at the teardown: an entry out of the cache has no use for
    /// later invalidations (it is never published again), yet until its teardown, a grace period
    /// away, every invalidation of its range would call it and take the state lock for it. Buffers
    /// that come and go at the same addresses then piled dozens of such entries under each
    /// `munmap` (measured: a third of the churn loop in this lock). Removed without waiting: from
    /// an invalidation's callback the removal takes effect when that invalidation ends, and its
    /// callbacks may still reach the entry until then (the tree keeps it alive). From here on
    /// the cache's own reference, taken here, keeps it alive until its teardown hands it to
    /// `freeable`. `removingSubscription` false: the caller takes it out of the tree with others
    /// before it lets go of the state lock (`retireEvictions`).
    func unpublish(_ entry: CacheEntry, _ state: inout State, removingSubscription: Bool = true) {
        index.remove(entry)
        entry.published = false
        counters.cachedRegions.subtract(1, ordering: .relaxed)
        _ = Unmanaged.passUnretained(entry).retain()  // adopted by `finishTeardown`
        if removingSubscription { try? entry.removeWithoutWaiting() }
    }

    /// Takes a published entry out of the cache for good (state lock held): no later lookup
    /// finds it, a holder's `isRevoked` says so, and the index's reference goes after a grace
    /// period.
    func revoke(_ entry: CacheEntry, _ state: inout State) {
        unpublish(entry, &state)
        entry.revoked.store(true, ordering: .releasing)
        counters.invalidations.add(1, ordering: .relaxed)
        if entry.holders.value > 1 { counters.revokedWhileHeld.add(1, ordering: .relaxed) }
        retire(entry, evicted: false)
    }

    // MARK: - References

    /// Drops one reference; the last one tears the entry down (deregisters its region).
    func put(_ entry: CacheEntry) {
        guard (try? entry.holders.put()) == true else { return }
        tearDownWhenSafe(entry)
    }

    // MARK: - Retired, torn down, freed

    /// Queues `entry` (just taken out of the index) for after a grace period: `evicted`, its
    /// teardown; otherwise the index's reference is dropped then.
    ///
    /// One grace period at a time per cache, for a whole batch: while one runs, retired entries
    /// gather in `pending`; when it ends, they are sealed into the next batch. An entry retired
    /// after a batch was sealed never rides on that batch's grace period, which may have begun
    /// before the entry left the index. Nothing is allocated per entry (arrays grow amortized).
    func retire(_ entry: CacheEntry, evicted: Bool) {
        let retiring = counters.retiringRegions.add(1, ordering: .relaxed).newValue
        let retiringBytes = counters.retiringBytes.add(entry.length, ordering: .relaxed).newValue
        let schedule = teardowns.withLock { lists -> Bool in
            lists.pending.append(RetiredEntry(entry: EntryReference(entry, retained: false), evicted: evicted))
            return sealBatch(&lists)
        }
        if schedule { srcu.call { [self] in runBatch() } }
        // Three quarters of the slack wait (evicted, or revoked and still pinned): start the grace
        // period now rather than after the batching delay, so that misses find the room before
        // they run out of it, and unmapped memory stays pinned no longer than the limits allow.
        if retiring >= max(1, limits.regionSlack * 3 / 4) || retiringBytes >= max(1, limits.byteSlack * 3 / 4) {
            srcu.expedite()
        }
    }

    /// Seals the pending entries into a batch if none is in flight; true when one must be
    /// scheduled.
    private func sealBatch(_ lists: inout TeardownLists) -> Bool {
        guard !lists.batchInFlight, !lists.pending.isEmpty else { return false }
        lists.batchInFlight = true
        swap(&lists.sealed, &lists.pending)
        return true
    }

    /// After the batch's grace period (on the SRCU reclaim thread): no reader can still see its
    /// entries, which become `ready`, for the misses to tear down (`reapRetired`).
    ///
    /// Why the misses: a teardown takes the locks a miss takes (the monitor's watch table, the
    /// teardown lists) and frees what the miss allocated. Done here, the reclaim thread and the
    /// missing thread handed those locks back and forth for every entry, and the miss that
    /// evicted paid for it in sleeps and wake-ups (perf: a third of an evicting miss in futex
    /// and scheduler code). A miss tears down a few ready entries inline, as UCX deregisters
    /// inline, with no lock anyone else is waiting for. What no miss took by the next batch's
    /// end (the cache went quiet) the reclaim thread tears down itself, one grace period later;
    /// a follow-up batch is scheduled for that when nothing else is.
    private func runBatch() {
        var leftovers: [RetiredEntry] = []
        var earlierFailures: [FailedDeregistration] = []  // retried below; this batch's wait for the next
        let (schedule, excess) = teardowns.withLock { lists -> (Bool, [EntryReference]) in
            // A follow-up batch (nothing sealed) only takes the leftovers: refused
            // deregistrations wait for a batch of new teardowns, as they always did.
            let followUp = lists.sealed.isEmpty
            swap(&leftovers, &lists.ready)
            swap(&lists.ready, &lists.sealed)
            if !followUp { swap(&earlierFailures, &lists.failed) }
            counters.readyToReap.store(lists.ready.count, ordering: .relaxed)
            lists.batchInFlight = false
            // Nobody missed for a while: do not let torn-down entries pile up.
            var excess: [EntryReference] = []
            if lists.freeable.count > 4096 { swap(&excess, &lists.freeable) }
            counters.freeable.subtract(excess.count, ordering: .relaxed)
            var schedule = sealBatch(&lists)
            if !schedule && !lists.ready.isEmpty {
                lists.batchInFlight = true  // an empty batch: its end reaps what is ready now
                schedule = true
            }
            return (schedule, excess)
        }
        for retired in leftovers { finishRetirement(retired, freeingHere: false) }
        retry(earlierFailures)
        for entry in excess { entry.release() }
        teardownEvents.wakeAll()
        if schedule { srcu.call { [self] in runBatch() } }
    }

    /// Takes the entries the CLOCK hand just evicted (state lock held) out of the interval tree
    /// and queues them for `tearDownEvicted`: one acquisition of each lock for the whole sweep,
    /// where one per entry cost an evicting miss two lock round trips.
    func retireEvictions(_ state: inout State) {
        guard !state.evicting.isEmpty else { return }
        space.removeIntervalsWithoutWaiting(state.evicting.subscriptions)
        teardowns.withLock { lists in
            state.evicting.forEachEntry { entry in
                lists.evicted.append(EntryReference(entry, retained: false))  // the reference `unpublish` took
            }
            // Counted before the list's hint says they wait (the hint is read without the lock).
            counters.retiringRegions.add(state.evicting.count, ordering: .relaxed)
            counters.retiringBytes.add(state.evicting.bytes, ordering: .relaxed)
            // Under the lock, as where the list is taken: the hint is the list's count whenever
            // the lock is free (a stale 0 would leave evicted entries nobody takes).
            counters.evictedWaiting.store(lists.evicted.count, ordering: .relaxed)
        }
        state.evicting.removeAll()
    }

    /// Tears down the evicted entries on this thread once at least `threshold` wait, after one
    /// grace period of its own; true when it tore any down. The caller is a miss out of the
    /// state lock.
    ///
    /// Why here and not through the reclaim thread: eviction is the miss's own work, and UCX does
    /// it inline. Through the reclaim thread each batch cost a wake-up, a grace period started
    /// from another thread and a hand-off of locks, one batch per few dozen evictions (perf: the
    /// evicting miss 12x UCX's, in futex, scheduler and membarrier code). One `synchronize` per
    /// `threshold` evictions (half the slack) costs one membarrier, amortized over the batch.
    /// Inside a read section (a miss from a callback) a grace period would wait for the caller:
    /// the entries go to the reclaim thread's batches instead.
    @discardableResult
    func tearDownEvicted(threshold: Int) -> Bool {
        guard counters.evictedWaiting.load(ordering: .relaxed) >= max(1, threshold) else { return false }
        var taken: [EntryReference] = []
        teardowns.withLock { lists in
            swap(&taken, &lists.evicted)
            counters.evictedWaiting.store(0, ordering: .relaxed)
        }
        guard !taken.isEmpty else { return false }
        guard !srcu.isInsideReadSection, !AddressSpace.isForkedChild, (try? srcu.synchronize()) != nil else {
            let schedule = teardowns.withLock { lists -> Bool in
                lists.pending.append(contentsOf: taken.map { RetiredEntry(entry: $0, evicted: true) })
                return sealBatch(&lists)
            }
            if schedule { srcu.call { [self] in runBatch() } }
            return false
        }
        var bytes = 0
        for reference in taken {
            let entry = reference.entry
            bytes += entry.length
            tearDown(entry, freeingHere: true)
        }
        // Once for the batch, after every registered count dropped (see `makeRoom`).
        counters.retiringRegions.subtract(taken.count, ordering: .relaxed)
        counters.retiringBytes.subtract(bytes, ordering: .relaxed)
        teardownEvents.wakeAll()
        return true
    }

    /// Tears down (evicted) or drops the index's reference to (revoked) up to `limit` entries
    /// whose grace period is over, on this thread (a miss, or a caller waiting for room or for
    /// every teardown). Not inside a read section, nor in a forked child.
    func reapRetired(atMost limit: Int) {
        guard counters.readyToReap.load(ordering: .relaxed) > 0, !srcu.isInsideReadSection,
              !AddressSpace.isForkedChild else { return }
        var taken: [RetiredEntry] = []
        teardowns.withLock { lists in
            guard !lists.ready.isEmpty else { return }
            if lists.ready.count <= limit {
                swap(&taken, &lists.ready)
            } else {
                taken = Array(lists.ready.suffix(limit))
                lists.ready.removeLast(limit)
            }
            counters.readyToReap.store(lists.ready.count, ordering: .relaxed)
        }
        for retired in taken { finishRetirement(retired, freeingHere: true) }
        if !taken.isEmpty { teardownEvents.wakeAll() }
    }

    /// The end of a retirement: an evicted entry is torn down, a revoked one loses the index's
    /// reference (its last holder tears it down).
    private func finishRetirement(_ retired: RetiredEntry, freeingHere: Bool) {
        let entry = retired.entry.entry
        let length = entry.length
        if retired.evicted { tearDown(entry, freeingHere: freeingHere) } else { put(entry) }
        counters.retiringRegions.subtract(1, ordering: .relaxed)
        counters.retiringBytes.subtract(length, ordering: .relaxed)
    }

    /// Tears down `entry` now, or after a grace period when called inside a read section (its
    /// subscription's removal would wait for the section it runs in).
    func tearDownWhenSafe(_ entry: CacheEntry) {
        guard srcu.isInsideReadSection else {
            tearDown(entry)
            teardownEvents.wakeAll()  // a miss may be waiting for room
            return
        }
        retire(entry, evicted: true)  // the reference `unpublish` took keeps it until the teardown
    }

    /// Deregisters the region and stops watching its range. Once. A refused deregistration
    /// keeps the entry (and its bytes counted) for a later retry. `freeingHere`: this thread
    /// may free the entry (a missing thread); otherwise it goes to `freeable`.
    func tearDown(_ entry: CacheEntry, freeingHere: Bool = false) {
        guard !entry.tornDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        do {
            try deregisterOnDevice(entry.region)
        } catch {
            recordFailure(error, FailedDeregistration(region: entry.region, bytes: entry.length,
                                                      owner: .entry(EntryReference(entry, retained: true))))
            return
        }
        finishTeardown(entry, freeingHere: freeingHere)
    }

    /// What follows a successful deregistration: the counts, the watch, and the entry's memory
    /// (the subscription left the tree when the entry left the cache: `unpublish`), freed here
    /// or handed to a missing thread to free, so that the thread that allocates entries also
    /// frees them instead of fighting another for the arena.
    private func finishTeardown(_ entry: CacheEntry, freeingHere: Bool = false) {
        counters.registered(regions: -1, bytes: -entry.length)
        if entry.watched { try? monitor?.unwatch(entry.range) }
        let retained = EntryReference(entry, retained: false)  // the reference `unpublish` took
        if freeingHere {
            retained.release()
            return
        }
        teardowns.withLock { $0.freeable.append(retained) }
        counters.freeable.add(1, ordering: .relaxed)
    }

    /// Deregisters a registration of one handle (uncached), or of a miss that lost a race.
    func deregister(_ region: RegisteredRegion, bytes: Int, uncached: Bool = false) {
        do {
            try deregisterOnDevice(region)
            if uncached { counters.uncachedRegistered(regions: -1, bytes: -bytes) }
        } catch {
            if !uncached { counters.registered(regions: 1, bytes: bytes) }  // still pinned: count it
            recordFailure(error, FailedDeregistration(region: region, bytes: bytes, owner: uncached ? .uncached : .raced))
        }
    }

    /// The registrar's deregistration, unless the process is exiting (`ProcessExitGate`): then the
    /// device objects may be gone, and the kernel drops the pins with the process anyway.
    private func deregisterOnDevice(_ region: RegisteredRegion) throws {
        _ = try ProcessExitGate.whileOpen { try registrar.deregisterRegion(region) }
    }

    private func recordFailure(_ error: any Error, _ failure: FailedDeregistration) {
        counters.failedDeregistrations.add(1, ordering: .relaxed)
        counters.lastFailure.withLock { $0 = "\(error)" }
        teardowns.withLock { $0.failed.append(failure) }
    }

    /// Tries every refused deregistration again (shutdown).
    func retryFailedDeregistrations() {
        var failed: [FailedDeregistration] = []
        teardowns.withLock { swap(&failed, &$0.failed) }
        retry(failed)
    }

    private func retry(_ failed: [FailedDeregistration]) {
        for item in failed {
            do {
                try deregisterOnDevice(item.region)
            } catch {
                counters.lastFailure.withLock { $0 = "\(error)" }
                teardowns.withLock { $0.failed.append(item) }
                continue
            }
            counters.failedDeregistrations.subtract(1, ordering: .relaxed)
            switch item.owner {
            case .entry(let reference):
                finishTeardown(reference.entry)
                reference.release()
            case .raced:
                counters.registered(regions: -1, bytes: -item.bytes)
            case .uncached:
                counters.uncachedRegistered(regions: -1, bytes: -item.bytes)
            }
        }
    }

    /// Frees up to `limit` torn-down entries on this thread.
    func releaseFreeable(atMost limit: Int) {
        guard counters.freeable.load(ordering: .relaxed) > 0 else { return }  // no lock when there is nothing
        var taken: [EntryReference] = []
        teardowns.withLock { lists in
            guard !lists.freeable.isEmpty else { return }
            if lists.freeable.count <= limit {
                swap(&taken, &lists.freeable)
            } else {
                taken = Array(lists.freeable.suffix(limit))
                lists.freeable.removeLast(limit)
            }
        }
        counters.freeable.subtract(taken.count, ordering: .relaxed)
        for entry in taken { entry.release() }
    }

    /// Waits until every entry retired so far is torn down (or released to its holders), and
    /// frees them. Not from inside a read section or on the reclaim thread.
    func waitForTeardowns() throws(NotifierError) {
        tearDownEvicted(threshold: 1)
        while true {
            try srcu.barrier()
            reapRetired(atMost: .max)
            let idle = teardowns.withLock { $0.pending.isEmpty && !$0.batchInFlight && $0.ready.isEmpty && $0.evicted.isEmpty }
            if idle && counters.retiringRegions.load(ordering: .acquiring) == 0 { break }
        }
        releaseFreeable(atMost: .max)
    }

    /// A miss out of room: tears down what is ready, else hurries the grace period of the batch
    /// in flight and waits a little for it (the caller checks the room again, bounded by its
    /// deadline).
    func waitForRetiring() {
        let before = counters.retiringRegions.load(ordering: .acquiring)
        tearDownEvicted(threshold: 1)
        reapRetired(atMost: .max)
        if counters.retiringRegions.load(ordering: .acquiring) < before { return }
        srcu.expedite()
        _ = teardownEvents.wait(until: {
            counters.readyToReap.load(ordering: .acquiring) > 0 || counters.retiringRegions.load(ordering: .acquiring) < before
        }, atMost: 10_000_000)
        reapRetired(atMost: .max)
    }
}

