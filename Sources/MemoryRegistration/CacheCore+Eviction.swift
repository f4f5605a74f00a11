import Synchronization

extension CacheCore {
    /// What `makeRoom` found under the state lock.
    private enum Room {
        case reserved
        case closed(String)
        /// Regions taken out of the cache are still pinned until their teardown: wait for it.
        case waitForTeardowns
        /// Every cached region is held: nothing can go.
        case full(regions: Int, bytes: Int)
    }

    /// Before a miss registers `bytes` more: makes room under both limits and reserves it.
    ///
    /// The limits count what is registered with the device: cached regions, and those taken out
    /// of the cache that still wait for their teardown (a grace period; readers may use their
    /// keys until it ends). Evicting frees nothing at once, so eviction works ahead: once the
    /// cache comes within a slack (1/8) of a limit, idle regions are evicted in a batch down to
    /// the limit minus one and a half slacks (`sweep`), and torn down after one grace period
    /// while the next misses fill the batch's room. Each miss evicts about one region (O(1)
    /// amortized, CLOCK), the cache is never emptied for one region, and no miss registers
    /// beyond a limit: if the slack is used up before the teardowns finished, the miss waits for
    /// them (bounded); if everything cached is held, it fails with `.limitReached`.
    func makeRoom(bytes: Int) throws(RegistrationError) {
        // Far from the limits (the usual miss): reserve without the state lock.
        if !isClosed.load(ordering: .acquiring),
           counters.reserve(bytes: bytes, maxRegions: limits.maxRegions - limits.regionSlack,
                            maxBytes: limits.maxPinnedBytes - limits.byteSlack) {
            tearDownEvicted(threshold: max(1, limits.regionSlack / 2))
            return
        }
        var deadline: ContinuousClock.Instant?
        while true {
            let room = state.withLock { state -> Room in
                if let reason = state.closedReason { return .closed(reason) }
                func reserveIfItFits() -> Bool {
                    counters.reserve(bytes: bytes, maxRegions: limits.maxRegions, maxBytes: limits.maxPinnedBytes)
                }
                // Teardowns lower the counts without this lock: read them afresh for each decision.
                if counters.cacheRegions + counters.reservedRegions + 1 > limits.maxRegions - limits.regionSlack
                    || counters.cacheBytes + counters.reservedBytes + bytes > limits.maxPinnedBytes - limits.byteSlack {
                    sweep(&state, bytes: bytes)
                }
                if reserveIfItFits() { return .reserved }
                // Retiring counts drop after the registered counts: seen at zero, the check after
                // it sees every teardown that finished.
                if counters.retiringRegions.load(ordering: .acquiring) > 0 { return .waitForTeardowns }
                if reserveIfItFits() { return .reserved }
                return .full(regions: counters.cacheRegions + counters.reservedRegions,
                             bytes: counters.cacheBytes + counters.reservedBytes)
            }
            switch room {
            case .reserved:
                // One grace period per half slack of evictions, on this thread (see `tearDownEvicted`).
                tearDownEvicted(threshold: max(1, limits.regionSlack / 2))
                return
            case .closed(let reason):
                throw .shutDown(reason: reason)
            case let .full(regions, pinned):
                throw .limitReached(regions: regions, maxRegions: limits.maxRegions, pinnedBytes: pinned,
                                    maxPinnedBytes: limits.maxPinnedBytes, requested: bytes)
            case .waitForTeardowns:
                let limit = deadline ?? ContinuousClock.now.advanced(by: .seconds(30))
                deadline = limit
                guard ContinuousClock.now < limit else {
                    throw .limitReached(regions: counters.cacheRegions, maxRegions: limits.maxRegions,
                                        pinnedBytes: counters.cacheBytes, maxPinnedBytes: limits.maxPinnedBytes,
                                        requested: bytes)
                }
                waitForRetiring()
            }
        }
    }

    /// Evicts every idle entry (the device refused a registration: ENOMEM / EAGAIN), and waits
    /// until they are really gone before the retry.
    func evictAllIdle() {
        state.withLock { state in
            var steps = 2 * counters.cachedRegions.load(ordering: .relaxed)
            while steps > 0, evictAtHand(&state, secondChance: false) != nil {
                steps -= 1
            }
            retireEvictions(&state)
        }
        try? waitForTeardowns()
    }

    /// The CLOCK hand (state lock held): evicts idle entries until what stays registered once
    /// the evictions in flight are torn down fits the limits minus the slack and minus a batch
    /// (half the slack), with `bytes` more. An entry used since the hand last passed gets a
    /// second chance; one in use is skipped. Bounded: at most two turns of the index, the second
    /// only if the first freed nothing.
    ///
    /// Why a batch: the miss that evicts it tears it down at once (`tearDownEvicted`, one grace
    /// period for all of it), and the misses that follow reserve without this lock until they
    /// used the batch's room. Evicting one region per miss made every miss at the limit take
    /// this lock, fail the lock-free reservation first and run the hand's set-up for one step.
    private func sweep(_ state: inout State, bytes: Int) {
        let maxStaying = limits.maxRegions - limits.regionSlack - limits.regionSlack / 2
        let maxStayingBytes = limits.maxPinnedBytes - limits.byteSlack - limits.byteSlack / 2
        func fits(_ state: inout State) -> Bool {
            // This sweep's batch is not counted as retiring yet.
            let retiring = counters.retiringRegions.load(ordering: .relaxed) + state.evicting.count
            let retiringBytes = counters.retiringBytes.load(ordering: .relaxed) + state.evicting.bytes
            return counters.cacheRegions - retiring + counters.reservedRegions + 1 <= maxStaying
                && counters.cacheBytes - retiringBytes + counters.reservedBytes + bytes <= maxStayingBytes
        }
        var steps = 2 * counters.cachedRegions.load(ordering: .relaxed)
        while steps > 0, !fits(&state), evictAtHand(&state, secondChance: true) != nil {
            steps -= 1
        }
        retireEvictions(&state)
    }

    /// One step of the hand: whether it evicted the entry it met, nil when the cache is empty.
    private func evictAtHand(_ state: inout State, secondChance: Bool) -> Bool? {
        guard let entry = index.entry(at: &state.hand) else { return nil }
        if secondChance, entry.referenced.load(ordering: .relaxed) {
            entry.referenced.store(false, ordering: .relaxed)
            return false
        }
        // Only the index's reference: freeze it (1 -> 0), so no lookup can take it any more.
        guard entry.holders.freeze(expected: 1) else { return false }
        unpublish(entry, &state, removingSubscription: false)
        counters.evictions.add(1, ordering: .relaxed)
        state.evicting.append(entry)  // out of the tree in `retireEvictions`
        return true
    }
}
