import NotifierEngine
import Monitors
import Verbs

extension CacheCore {
    /// A miss: registers the page-aligned range around `[address, end)` and publishes it as a
    /// cached entry, or registers the buffer uncached when it must not be cached.
    ///
    /// The collision-retry protocol (the kernel's `mmu_interval_read_begin` / `read_retry`; seed
    /// 004's reason for `mm_take_all_locks`: a new registration must see every invalidation
    /// already in flight):
    /// 1. Insert the entry's subscription first: from then on every invalidation of its range
    ///    calls it (`CacheCore.invalidate`), which sets its sequence.
    /// 2. `readBegin`: waits while an invalidation that may cover the range is in flight (a
    ///    monitor's window of ranges not read yet included), then returns the sequence.
    /// 3. Watch the range *after* `readBegin`, on every attempt: the watch registers with
    ///    userfaultfd the mappings there now (a `munmap` + `mmap` since an earlier watch left a
    ///    new, unwatched mapping) and checks the pages are covered; any later change to them is
    ///    an event or a hooked call, which invalidates the subscription. (Watching only before
    ///    `readBegin` leaves that gap open: the cache's stress test found it.)
    /// 4. Register with the device outside every lock: `ibv_reg_mr` may take milliseconds, and
    ///    nobody waits in `readBegin` holding a lock the invalidation takes.
    /// 5. Under the state lock, which the invalidation holds around `setSequence`: `readRetry`.
    ///    If an invalidation ran since step 2, the registration may be of the old pages: throw it
    ///    away and start again (at most `maxAttempts` times). Otherwise publish: from here on an
    ///    invalidation finds the entry and revokes it.
    /// A registration that raced an overlapping invalidation is therefore never handed out.
    /// Room under the limits is made (`makeRoom`) once the first watch said the range can be
    /// cached: a buffer registered uncached (shared memory, a failed monitor) evicts nothing.
    func miss(address: UInt, end: UInt, access: AccessFlags) throws(RegistrationError) -> Registration {
        if end - address > Self.maxLength {  // passed the hit path's checks, which skip this one
            _ = try rejectOrEnd(address: address, length: Int(bitPattern: end - address), call: "register")
        }
        let start = address & ~pageMask
        let alignedEnd = (end + pageMask) & ~pageMask  // `validate` left room for the rounding
        let length = Int(alignedEnd - start)
        let requested = Int(end - address)
        guard length <= limits.maxPinnedBytes else {
            return try registerUncached(address: address, length: requested, access: access,
                                        reason: "larger than maxPinnedBytes (\(limits.maxPinnedBytes) bytes)")
        }
        reapRetired(atMost: 4)  // teardowns whose grace period is over, inline (see `runBatch`)
        releaseFreeable(atMost: 16)
        var attempt = try MissAttempt(core: self, start: start, length: length)  // 1
        var evictedForDevice = false
        for _ in 0..<max(1, options.maxAttempts) {
            let sequence: UInt64
            do {
                sequence = try attempt.entry.readBegin()  // 2
            } catch .forkedChild {
                throw .forkedChild(call: "register")
            } catch {
                throw .wouldDeadlock(call: "register", reason: "\(error)")
            }
            if let reason = attempt.watch() {  // 3
                attempt.end()
                return try registerUncached(address: address, length: requested, access: access, reason: reason)
            }
            try attempt.reserve(bytes: length)
            let region: RegisteredRegion
            let registeredAccess: AccessFlags
            do {
                (region, registeredAccess) = try registerRegion(start: start, length: length, access: access)  // 4
            } catch let error as VerbsError
                where !evictedForDevice && (error.errno == .noMemory || error.errno == .resourceTemporarilyUnavailable) {
                // The device is full: make room by evicting everything idle, then once more.
                evictedForDevice = true
                attempt.unwatch()
                evictAllIdle()
                continue
            } catch {
                throw .device(error, address: address, length: requested, access: access)
            }
            let outcome = state.withLock { state -> PublishOutcome in  // 5
                if let reason = state.closedReason { return .closed(reason: reason) }
                guard !attempt.entry.readRetry(sequence) else { return .raced }
                attempt.entry.region = region
                attempt.entry.access = registeredAccess
                try? attempt.entry.holders.unfreeze(2)  // the index's reference and the caller's
                counters.registered(regions: 1, bytes: length)  // before the room goes back: see `reserve`
                attempt.publish(&state)
                return .published
            }
            switch outcome {
            case .published:
                counters.misses.add(1, ordering: .relaxed)
                return Registration(address: address, length: requested, entry: Unmanaged.passUnretained(attempt.entry))
            case .raced, .closed:
                // An invalidation raced (or the cache closed): this registration may be of old pages.
                counters.raced.add(1, ordering: .relaxed)
                deregister(region, bytes: length)
                attempt.unwatch()
                if case .closed(let reason) = outcome { throw .shutDown(reason: reason) }
            }
        }
        throw .keptChanging(address: address, length: requested, attempts: options.maxAttempts)
    }

    /// How step 5 of a miss ended.
    private enum PublishOutcome {
        /// The entry is in the index: from here on an invalidation revokes it.
        case published
        /// An invalidation ran since `readBegin`: the registration may be of the old pages.
        case raced
        /// The cache closed while the miss registered.
        case closed(reason: String)
    }

    /// Registers with the access the policy asks for (widened where the memory allows), and
    /// says which access the region really has.
    private func registerRegion(start: UInt, length: Int, access: AccessFlags) throws -> (RegisteredRegion, AccessFlags) {
        if case .widened(let extra) = options.accessPolicy, !access.isSuperset(of: extra) {
            let wider = access.union(extra)
            if let widened = try? registrar.registerRegion(address: start, length: length, access: wider) {
                return (widened, wider)
            }
        }
        return (try registrar.registerRegion(address: start, length: length, access: access), access)
    }

    /// A registration for one handle alone, of exactly the buffer: memory that must not be
    /// cached, or more than the cache may hold.
    func registerUncached(address: UInt, length: Int, access: AccessFlags, reason: String)
        throws(RegistrationError) -> Registration
    {
        do {
            let region = try registrar.registerRegion(address: address, length: length, access: access)
            counters.uncached.add(1, ordering: .relaxed)
            counters.uncachedRegistered(regions: 1, bytes: length)
            return Registration(address: address, length: length, uncached: region, core: self, reason: reason)
        } catch {
            throw .device(error, address: address, length: length, access: access)
        }
    }

    /// Gives back room a miss reserved and did not use (`MissAttempt`).
    func unreserve(bytes: Int) {
        counters.unreserve(bytes: bytes)
        teardownEvents.wakeAll()
    }
}
