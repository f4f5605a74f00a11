extension RegistrationCache {
    /// Before a miss registers `bytes` more: evicts idle entries until one more region and
    /// `bytes` more pinned bytes fit the limits (as far as idle entries allow).
    func makeRoom(forBytes bytes: Int) {
        let fits = { (state: State) in
            state.entries.count + 1 <= self.limits.maxRegions
                && self.counters.pinnedBytes.load(ordering: .relaxed) + bytes <= self.limits.maxPinnedBytes
        }
        state.withLock { state in
            if !fits(state) { sweep(&state, until: fits) }
        }
    }

    /// Evicts every idle entry (the device refused a registration: ENOMEM / EAGAIN).
    func evictAllIdle() {
        state.withLock { state in sweep(&state) { _ in false } }
        try? srcu.barrier()  // let the evicted regions really go before the retry
    }

    /// The CLOCK hand: an entry used since the hand last passed gets a second chance; an idle
    /// one (only the index holds it) is frozen (1 → 0: no lookup can take it any more) and
    /// evicted; one in use is skipped. Stops when `satisfied` or after two full turns.
    private func sweep(_ state: inout State, until satisfied: (State) -> Bool) {
        var steps = 2 * state.clock.count
        while steps > 0, !state.clock.isEmpty, !satisfied(state) {
            steps -= 1
            if state.hand >= state.clock.count { state.hand = 0 }
            let entry = state.clock[state.hand]
            if entry.referenced.load(ordering: .relaxed) {
                entry.referenced.store(false, ordering: .relaxed)
                state.hand += 1
                continue
            }
            guard entry.holders.freeze(expected: 1) else {
                state.hand += 1
                continue
            }
            // The slot now holds another entry (swap-remove): do not advance the hand.
            unpublish(entry, &state)
            counters.evictions.add(1, ordering: .relaxed)
            retire(entry, frozen: true)
        }
    }
}
