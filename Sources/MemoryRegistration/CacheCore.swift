#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine
import Monitors
import Synchronization
import Verbs

/// Everything a `RegistrationCache` is, except its public face: what cached entries and counted
/// registrations keep alive (through `CacheEntry.core`) after the last reference to the cache is
/// gone, until the last of them is released.
///
/// It owns no thread and no monitor: invalidations come from the process's address space and its
/// one userfaultfd monitor (`AddressSpace.process`, `MemoryMonitor.shared`), shared by every
/// cache in the process, and teardowns run on that space's SRCU reclaim thread.
@usableFromInline
final class CacheCore: Sendable {
    let registrar: any MemoryRegistrar
    let options: RegistrationCache.Options
    let limits: RegistrationCache.Limits
    let space: AddressSpace
    @usableFromInline let srcu: SRCUDomain
    /// `srcu`'s read side, kept here so a hit loads one word (see `SRCUReadSide`).
    @usableFromInline let readSide: SRCUReadSide
    /// Where watches go; nil for `Options.monitoring == .explicitOnly`.
    let monitor: MemoryMonitor?
    let index: RegionIndex
    let state = Locked(State())
    @usableFromInline let counters = CacheCounters()
    let teardowns = Locked(TeardownLists())
    /// Woken whenever a teardown finishes (a miss waiting for room watches it).
    let teardownEvents = WaitQueue()
    /// Mirrors `State.closedReason != nil` for lock-free checks.
    @usableFromInline let isClosed = Atomic<Bool>(false)
    @usableFromInline let pageMask: UInt

    struct State: Sendable {
        /// The CLOCK hand, walking the index (`RegionIndex.Hand`).
        var hand = RegionIndex.Hand()
        /// Set by `close(reason:)`: later calls fail with it.
        var closedReason: String?
        /// What the hand evicted in this sweep (`EvictionBatch`). Empty outside a sweep.
        var evicting = EvictionBatch()
    }

    init(registrar: any MemoryRegistrar, options: RegistrationCache.Options, monitor: MemoryMonitor?) {
        self.registrar = registrar
        self.options = options
        self.monitor = monitor
        ProcessExitGate.installed
        space = monitor?.space ?? .process
        srcu = space.srcu
        readSide = srcu.readSide
        index = RegionIndex(srcu: srcu)
        limits = RegistrationCache.Limits(options, device: registrar.limits)
        pageMask = UInt(sysconf(Int32(_SC_PAGESIZE))) - 1
    }

    // MARK: - Lookups

    /// Waits while a monitor's window is open, so that a lookup made after `munmap` returned
    /// finds the index already without the old region. The monitor opens its window before it
    /// reads the event that lets `munmap` return, and closes it only after the cache revoked what
    /// the event covers; a hit reads the window sequence (a load, no write) and finds it even
    /// almost always. Invalidations of known ranges (hooks, explicit calls) do not make a hit
    /// wait: they end before the call that made them returns, so no lookup that starts after that
    /// call can find what they revoked.
    ///
    /// From inside an invalidation callback it cannot wait (the window may be the callback's
    /// own): it throws `.wouldDeadlock` naming `call` instead.
    @usableFromInline @inline(__always)
    func settleInvalidations(call: String) throws(RegistrationError) {
        let sequence = space.openWindowSequence
        if sequence & 1 == 1 { try settleOpenWindow(sequence, call: call) }
    }

    @usableFromInline
    func settleOpenWindow(_ sequence: UInt64, call: String) throws(RegistrationError) {
        do {
            try space.waitWhileWindowOpen(sequence)
        } catch .forkedChild {
            // No interpolation here: in a fork() child a lock of the runtime's that a parent
            // thread held at the fork stays held (a literal `call` is an immortal string).
            throw .forkedChild(call: call)
        } catch {
            throw .wouldDeadlock(call: call, reason: "\(error)")
        }
    }

    /// The longest range a cache takes: half of `Int.max`, far beyond any address space (x86-64
    /// user space is 2^47 bytes), so that a range rounded out to pages still fits an `Int`.
    static var maxLength: UInt { UInt(Int.max / 2) }

    /// The checks before a lookup: the cache is open, the range is usable. Returns its end. The
    /// common case is a few tests inlined into the hit; anything else goes to `rejectOrEnd`.
    @usableFromInline @inline(__always)
    func validate(address: UInt, length: Int, call: String) throws(RegistrationError) -> UInt {
        // A load, not the state lock: the hit paths write no shared cache line.
        let (end, overflow) = address.addingReportingOverflow(UInt(bitPattern: length))
        // A length above `maxLength` passes here (no cached region is that long, so it cannot
        // hit): the miss refuses it through `rejectOrEnd`, keeping this path as short as it was.
        if !isClosed.load(ordering: .acquiring), length > 0, address != 0, !overflow, end <= UInt.max - pageMask {
            return end
        }
        return try rejectOrEnd(address: address, length: length, call: call)
    }

    /// The error `validate` found: the cache is closed (its reason is set before the flag), or
    /// the range is unusable. Returns the end only if the checks pass after all.
    @usableFromInline
    func rejectOrEnd(address: UInt, length: Int, call: String) throws(RegistrationError) -> UInt {
        if isClosed.load(ordering: .acquiring), let reason = state.withLock({ $0.closedReason }) {
            throw .shutDown(reason: reason)
        }
        guard length > 0 else {
            throw .invalidRange(call: call, address: address, length: length, reason: "the length must be positive")
        }
        guard UInt(length) <= Self.maxLength else {
            throw .invalidRange(call: call, address: address, length: length,
                                reason: "the length is larger than any address space (at most \(Self.maxLength) bytes)")
        }
        guard address != 0 else {
            throw .invalidRange(call: call, address: address, length: length, reason: "the address is NULL")
        }
        let (end, overflow) = address.addingReportingOverflow(UInt(length))
        guard !overflow, end <= UInt.max - pageMask else {
            throw .invalidRange(call: call, address: address, length: length,
                                reason: "the range wraps the end of the address space")
        }
        return end
    }

    /// The keys of the entry serving the range, its CLOCK bit set, a scoped hit counted on this
    /// thread's own line. Inside a read section of `srcu` only: the keys are valid until it ends.
    @usableFromInline
    func scopedKeys(start: UInt, end: UInt, access: AccessFlags) -> (lkey: UInt32, rkey: UInt32)? {
        let bits = index.lookup(start: start, end: end, access: access.rawValue)
        if bits == 0 { return nil }
        counters.countScopedHit()
        return Unmanaged<CacheEntry>.fromOpaque(rawPointer(bits))._withUnsafeGuaranteedRef { entry in
            entry.markReferenced()
            return (entry.region.lkey, entry.region.rkey)
        }
    }

    /// A reference on a cached entry serving the range (seed 004: found under the read
    /// section, referenced only if its count is not zero, then checked still valid). Returned
    /// unretained: the counted reference keeps the entry alive (its teardown waits for it), and
    /// a Swift retain would be one more atomic write on the entry.
    func lookupCounted(start: UInt, end: UInt, access: AccessFlags) throws(RegistrationError) -> Unmanaged<CacheEntry>? {
        try settleInvalidations(call: "register")
        let token = readSide.lock()
        let bits = index.lookup(start: start, end: end, access: access.rawValue)
        guard bits != 0 else {
            readSide.unlock(token)
            return nil
        }
        let entry = Unmanaged<CacheEntry>.fromOpaque(rawPointer(bits))
        let (taken, valid) = entry._withUnsafeGuaranteedRef { entry -> (Bool, Bool) in
            guard entry.holders.getUnlessZero() else { return (false, false) }
            entry.markReferenced()
            return (true, !entry.revoked.load(ordering: .acquiring))
        }
        readSide.unlock(token)
        guard taken else { return nil }
        if valid { return entry }
        entry._withUnsafeGuaranteedRef { put($0) }  // revoked between the lookup and the reference: a miss after all
        return nil
    }

    // MARK: - The invalidation

    /// The invalidation callback of every entry (`CacheEntry.invalidate`): revoke it. Runs inside
    /// a read section of the space's SRCU domain, on the monitor's worker, in a thread whose
    /// hooked `munmap`/`mprotect` touched the range, or in a caller of explicit invalidation;
    /// never on the thread that reads userfaultfd events.
    ///
    /// Under the state lock, which the miss holds around `readRetry` (the kernel's rule for
    /// `mmu_interval_set_seq`): the sequence is set first, so a miss racing this invalidation
    /// discards its registration; then a published entry leaves the index at
    /// once (no later lookup finds it) and is marked revoked; its deregistration waits for a
    /// grace period (readers of `withRegistration`) and for the last `Registration` holding it.
    /// A write-protect change keeps a published region that cannot write; a registration still
    /// in flight is made to retry whatever the event (its access may yet include write).
    func invalidate(_ entry: CacheEntry, _ invalidation: InvalidationRange, sequence: UInt64) {
        state.withLock { state in
            if invalidation.event == .writeProtect, entry.published, !entry.access.needsWritableMemory { return }
            entry.setSequence(sequence)
            if entry.published { revoke(entry, &state) }
        }
    }

    // MARK: - Closing

    /// Revokes everything and refuses later calls with `reason`. Idempotent.
    func close(reason: String) {
        state.withLock { state in
            guard state.closedReason == nil else { return }
            state.closedReason = reason
            isClosed.store(true, ordering: .releasing)
            while let entry = index.entry(at: &state.hand) { revoke(entry, &state) }
        }
    }

    /// Closes, then deregisters everything nobody holds (registrations still held are
    /// deregistered when released). From the SRCU reclaim thread it cannot wait for a grace
    /// period: the teardowns then finish when their batch runs.
    func shutdown(reason: String) {
        close(reason: reason)
        try? waitForTeardowns()
        retryFailedDeregistrations()
    }
}
