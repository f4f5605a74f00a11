#if canImport(Glibc)
import Glibc
#endif
import MMUNotifier
import MemoryMonitor
import Synchronization
import Verbs

/// Counted registrations of any buffer, cached, revoked when the memory under them changes,
/// registered again on next use, torn down only after every holder and reader is done.
///
/// - Hit: a cached region covers the buffer with at least the asked access.
/// - Miss: `readBegin` on a new interval subscription, watch the range, `ibv_reg_mr` outside
///   every lock, then under the cache lock `readRetry`: if an invalidation raced, the new
///   region is thrown away and the miss starts over (bounded).
/// - Invalidation: every cached region overlapping the range leaves the index at once (no
///   later lookup finds it) and is marked revoked; its deregistration waits for a grace period
///   (readers of `withRegistration`) and for the last `Registration` holding it.
///
/// Overlap policy: no merging. A miss registers exactly the page-aligned buffer; a later
/// buffer inside it hits; one that sticks out gets a region of its own (regions may overlap).
/// Merging (UCX) must deregister the old region while holders may still use it, and build the
/// merged one while holding the lock that lookups need; libfabric removed merging for that
/// reason. Neighbouring buffers cost one region each instead.
public final class RegistrationCache: Sendable {
    public let registrar: any MemoryRegistrar
    public let monitor: MemoryMonitor
    public let options: Options
    @usableFromInline let srcu: SRCUDomain
    let space: AddressSpace
    let index: RegionIndex
    let limits: Limits
    let state = Locked(State())
    let counters = CacheCounters()
    /// Releases and teardowns (what registrations retain instead of the cache: see its type).
    let reclaimer: RegionReclaimer
    /// Mirrors `State.closedReason != nil` for lock-free checks.
    let isClosed = Atomic<Bool>(false)
    let pageMask: UInt
    private let invalidationHandler: InvalidationHandler
    private let deviceEvents: DeviceEventMonitor?

    struct State: Sendable {
        /// Cached entries by their subscription.
        var entries: [ObjectIdentifier: CacheEntry] = [:]
        /// The CLOCK ring of cached entries, and each entry's place in it.
        var clock: [CacheEntry] = []
        var clockSlot: [ObjectIdentifier: Int] = [:]
        var hand = 0
        /// Set by `shutdown()` or a fatal device event: later calls fail with it.
        var closedReason: String?
    }

    /// A cache over a real device: registers through `protectionDomain`, and revokes every
    /// registration if the device reports a fatal error.
    public convenience init(protectionDomain: ProtectionDomain, options: Options = .init()) {
        self.init(registrar: protectionDomain, options: options, deviceContext: protectionDomain.context)
    }

    /// A cache over any registrar (tests and benchmarks use one that does no device work).
    public convenience init(registrar: any MemoryRegistrar, options: Options = .init()) {
        self.init(registrar: registrar, options: options, deviceContext: nil)
    }

    private init(registrar: any MemoryRegistrar, options: Options, deviceContext: DeviceContext?) {
        self.registrar = registrar
        self.options = options
        srcu = SRCUDomain()
        space = AddressSpace(srcu: srcu)
        index = RegionIndex(srcu: srcu)
        monitor = MemoryMonitor(space: space, useUserfaultfd: options.monitoring == .userfaultfd)
        limits = Limits(options, device: registrar.limits)
        reclaimer = RegionReclaimer(srcu: srcu, space: space, monitor: monitor, counters: counters)
        pageMask = UInt(sysconf(Int32(_SC_PAGESIZE))) - 1
        let handler = InvalidationHandler()
        invalidationHandler = handler
        if let deviceContext {
            deviceEvents = DeviceEventMonitor(context: deviceContext) { event in
                if event == .deviceFatal { handler.cache?.close(reason: "the device reported a fatal error") }
            }
        } else {
            deviceEvents = nil
        }
        handler.cache = self
    }

    /// How invalidations reach this cache: userfaultfd, or explicit calls only (and why).
    public var monitoring: MemoryMonitor.Mode { monitor.mode }

    // MARK: - Register

    /// A counted registration of `buffer` with at least `access`.
    public func register(_ buffer: UnsafeRawBufferPointer, access: AccessFlags) throws(RegistrationError)
        -> Registration
    {
        try register(address: UInt(bitPattern: buffer.baseAddress), length: buffer.count, access: access)
    }

    public func register(_ buffer: UnsafeMutableRawBufferPointer, access: AccessFlags) throws(RegistrationError)
        -> Registration
    {
        try register(address: UInt(bitPattern: buffer.baseAddress), length: buffer.count, access: access)
    }

    /// A counted registration of `length` bytes at `address` with at least `access`.
    public func register(address: UInt, length: Int, access: AccessFlags) throws(RegistrationError)
        -> Registration
    {
        let end = try validate(address: address, length: length, call: "register")
        if let entry = lookupCounted(start: address, end: end, access: access) {
            counters.hits.add(1, ordering: .relaxed)
            return Registration(address: address, length: length, backing: .cached(entry, reclaimer))
        }
        return try miss(address: address, end: end, access: access)
    }

    /// Runs `body` with a registration of `buffer` valid inside it. On a hit nothing is
    /// counted and no shared memory is written: the lookup runs in an SRCU read section and
    /// the region cannot be torn down before the section (the closure) ends. `body` may block,
    /// but a long body delays every teardown.
    ///
    /// Inlinable so that it is specialized in the caller: unspecialized, each call looked up
    /// generic metadata at run time (a third of a hit).
    @inlinable
    public func withRegistration<R>(_ buffer: UnsafeRawBufferPointer, access: AccessFlags,
                                    _ body: (ScopedRegistration) throws -> R) throws -> R {
        let address = UInt(bitPattern: buffer.baseAddress)
        let end = try prepareLookup(address: address, length: buffer.count, call: "withRegistration")
        // R? tells a miss (nil) from a body that returned nil itself (.some(nil)).
        let hit: R? = try srcu.withReadLock { () throws -> R? in
            guard let record = lookupInReadSection(start: address, end: end, access: access) else { return nil }
            return try body(ScopedRegistration(address: address, length: buffer.count,
                                               lkey: record.lkey, rkey: record.rkey))
        }
        if let hit { return hit }
        let registration = try register(address: address, length: buffer.count, access: access)
        defer { try? registration.release() }
        return try body(ScopedRegistration(address: address, length: buffer.count,
                                           lkey: registration.lkey, rkey: registration.rkey))
    }

    /// The checks before a scoped lookup: the arguments, and that no invalidation is in flight.
    @usableFromInline
    func prepareLookup(address: UInt, length: Int, call: String) throws(RegistrationError) -> UInt {
        let end = try validate(address: address, length: length, call: call)
        settleInvalidations()
        return end
    }

    /// The record serving the range, its entry marked referenced for CLOCK. Inside a read
    /// section of `srcu` only: the keys are valid until it ends.
    @usableFromInline
    func lookupInReadSection(start: UInt, end: UInt, access: AccessFlags) -> RegionRecord? {
        guard let record = index.lookup(start: start, end: end, access: access.rawValue) else { return nil }
        Unmanaged<CacheEntry>.fromOpaque(UnsafeRawPointer(bitPattern: record.owner).unsafelyUnwrapped)
            ._withUnsafeGuaranteedRef { $0.markReferenced() }
        return record
    }

    @inlinable
    public func withRegistration<R>(_ buffer: UnsafeMutableRawBufferPointer, access: AccessFlags,
                                    _ body: (ScopedRegistration) throws -> R) throws -> R {
        try withRegistration(UnsafeRawBufferPointer(buffer), access: access, body)
    }

    /// Tells the cache that `[address, address + length)` changed (explicit monitoring, or an
    /// allocator that recycles memory without unmapping it).
    public func invalidate(address: UInt, length: Int, cause: InvalidationCause = .reused) {
        guard length > 0, let range = try? AddressRange(start: address, length: UInt(length)) else { return }
        monitor.invalidate(range, cause: cause)
    }

    // MARK: - Lookup and miss

    @inline(__always)
    func settleInvalidations() { reclaimer.settleInvalidations() }

    private func validate(address: UInt, length: Int, call: String) throws(RegistrationError) -> UInt {
        // A load, not the state lock: the scoped hit path must write no shared cache line.
        if isClosed.load(ordering: .acquiring), let reason = state.withLock({ $0.closedReason }) {
            throw .shutDown(reason: reason)
        }
        guard length > 0 else {
            throw .invalidRange(call: call, address: address, length: length, reason: "the length must be positive")
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

    /// A reference on a cached entry serving the range (seed 004: found under the read
    /// section, referenced only if its count is not zero, then checked still valid).
    private func lookupCounted(start: UInt, end: UInt, access: AccessFlags) -> CacheEntry? {
        settleInvalidations()
        let (candidate, valid): (CacheEntry?, Bool) = srcu.withReadLock {
            guard let record = index.lookup(start: start, end: end, access: access.rawValue) else { return (nil, false) }
            let entry = Unmanaged<CacheEntry>.fromOpaque(UnsafeRawPointer(bitPattern: record.owner).unsafelyUnwrapped)
                .takeUnretainedValue()
            guard entry.holders.getUnlessZero() else { return (nil, false) }
            entry.markReferenced()
            return (entry, !entry.revoked.load(ordering: .acquiring))
        }
        guard let candidate else { return nil }
        if valid { return candidate }
        put(candidate)  // revoked between the lookup and the reference: a miss after all
        return nil
    }

    private func miss(address: UInt, end: UInt, access: AccessFlags) throws(RegistrationError) -> Registration {
        let start = address & ~pageMask
        let alignedEnd = (end + pageMask) & ~pageMask
        let length = Int(alignedEnd - start)
        guard length <= limits.maxPinnedBytes else {
            return try registerUncached(address: address, end: end, access: access,
                                        reason: "larger than maxPinnedBytes (\(limits.maxPinnedBytes) bytes)")
        }
        guard let range = try? AddressRange(start: start, length: UInt(length)) else {
            throw .invalidRange(call: "register", address: address, length: Int(end - address), reason: "not a range")
        }
        let subscription: IntervalSubscription
        do {
            subscription = try space.insertInterval(range, ops: invalidationHandler)
        } catch {
            throw .shutDown(reason: "\(error)")
        }
        var evictedForDevice = false
        for _ in 0..<max(1, options.maxAttempts) {
            makeRoom(forBytes: length)
            let sequence = subscription.readBegin()
            // Watch after readBegin, on every attempt: the watch registers the mapping there
            // *now* (munmap + mmap since an earlier watch leaves a new, unwatched mapping) and
            // checks its pages are covered; any later change is an event of a watched mapping
            // and bumps the sequence readRetry checks. Watching only before readBegin (as
            // DESIGN.md orders it) leaves that munmap + mmap gap open: the stress test found it.
            var watched = false
            switch monitor.watch(range, allowingSharedMemory: options.cachesSharedMemory) {
            case .watched: watched = true
            case .uncached(let reason):
                if options.monitoring == .userfaultfd {
                    try? subscription.remove()
                    return try registerUncached(address: address, end: end, access: access, reason: reason.description)
                }
            }
            let memory: any RegisteredMemory
            let registeredAccess: AccessFlags
            do {
                (memory, registeredAccess) = try registerRegion(start: start, length: length, access: access)
            } catch let error as VerbsError
                where !evictedForDevice && (error.errno == .noMemory || error.errno == .resourceTemporarilyUnavailable) {
                evictedForDevice = true
                if watched { try? monitor.unwatch(range) }
                evictAllIdle()
                continue
            } catch {
                abandon(subscription, range: range, watched: watched)
                let verbs = error as? VerbsError ?? VerbsError(call: "ibv_reg_mr", detail: "\(error)")
                throw .device(verbs, address: address, length: Int(end - address), access: access)
            }
            let entry = state.withLock { state -> CacheEntry? in
                guard !subscription.readRetry(sequence), state.closedReason == nil else { return nil }
                let entry = CacheEntry(start: start, end: alignedEnd, access: registeredAccess, memory: memory,
                                       subscription: subscription, watched: watched)
                _ = entry.holders.getUnlessZero()  // the caller's reference, beside the index's
                state.entries[ObjectIdentifier(subscription)] = entry
                state.clockSlot[ObjectIdentifier(entry)] = state.clock.count
                state.clock.append(entry)
                index.insert(entry.record)
                return entry
            }
            guard let entry else {
                counters.raced.add(1, ordering: .relaxed)
                try? memory.deregister()
                if watched { try? monitor.unwatch(range) }
                if let reason = state.withLock({ $0.closedReason }) {
                    try? subscription.remove()
                    throw .shutDown(reason: reason)
                }
                continue
            }
            counters.misses.add(1, ordering: .relaxed)
            counters.pinnedBytes.add(length, ordering: .relaxed)
            counters.registeredRegions.add(1, ordering: .relaxed)
            return Registration(address: address, length: Int(end - address), backing: .cached(entry, reclaimer))
        }
        try? subscription.remove()
        throw .keptChanging(address: address, length: Int(end - address), attempts: options.maxAttempts)
    }

    /// Registers with the access the policy asks for (widened where the memory allows), and
    /// says which access the region really has.
    private func registerRegion(start: UInt, length: Int, access: AccessFlags) throws
        -> (any RegisteredMemory, AccessFlags)
    {
        if case .widened(let extra) = options.accessPolicy, !access.isSuperset(of: extra) {
            let wider = access.union(extra)
            if let widened = try? registrar.registerRegion(address: start, length: length, access: wider) {
                return (widened, wider)
            }
        }
        return (try registrar.registerRegion(address: start, length: length, access: access), access)
    }

    private func registerUncached(address: UInt, end: UInt, access: AccessFlags, reason: String)
        throws(RegistrationError) -> Registration
    {
        let length = Int(end - address)
        do {
            let memory = try registrar.registerRegion(address: address, length: length, access: access)
            counters.uncached.add(1, ordering: .relaxed)
            counters.pinnedBytes.add(length, ordering: .relaxed)
            counters.registeredRegions.add(1, ordering: .relaxed)
            return Registration(address: address, length: length, backing: .uncached(memory, reclaimer),
                                uncachedReason: reason)
        } catch let error as VerbsError {
            throw .device(error, address: address, length: length, access: access)
        } catch {
            throw .device(VerbsError(call: "ibv_reg_mr", detail: "\(error)"))
        }
    }

    private func abandon(_ subscription: IntervalSubscription, range: AddressRange, watched: Bool) {
        try? subscription.remove()
        if watched { try? monitor.unwatch(range) }
    }

    // MARK: - Release and teardown

    func put(_ entry: CacheEntry) { reclaimer.put(entry) }

    func tearDown(_ entry: CacheEntry) { reclaimer.tearDown(entry) }

    /// Takes `entry` out of the index and the CLOCK ring. Under the state lock.
    func unpublish(_ entry: CacheEntry, _ state: inout State) {
        state.entries[ObjectIdentifier(entry.subscription)] = nil
        index.remove(owner: entry.owner, start: entry.start, end: entry.end)
        if let slot = state.clockSlot.removeValue(forKey: ObjectIdentifier(entry)) {
            let last = state.clock.removeLast()
            if slot < state.clock.count {
                state.clock[slot] = last
                state.clockSlot[ObjectIdentifier(last)] = slot
            }
        }
    }

    /// After a grace period (no reader of the index can still see `entry`), drops the index's
    /// reference, or tears a frozen (evicted) entry down.
    func retire(_ entry: CacheEntry, frozen: Bool) {
        counters.pendingTeardowns.add(1, ordering: .relaxed)
        srcu.call { [self] in
            counters.pendingTeardowns.subtract(1, ordering: .relaxed)
            if frozen { tearDown(entry) } else { put(entry) }
        }
    }

    /// The invalidation callback: revoke every entry of `subscription`. Runs on the monitor's
    /// worker (or the explicit caller), never on the thread that reads userfaultfd events.
    /// A write-protect change keeps a published region that cannot write; anything else (and
    /// a registration still in flight, whose access may yet include write) is revoked.
    func revoke(_ subscription: IntervalSubscription, sequence: UInt64, event: InvalidationEvent) {
        state.withLock { state in
            let entry = state.entries[ObjectIdentifier(subscription)]
            if event == .writeProtect, let entry, !entry.access.needsWritableMemory { return }
            subscription.setSequence(sequence)
            guard let entry else { return }
            unpublish(entry, &state)
            entry.revoked.store(true, ordering: .releasing)
            counters.invalidations.add(1, ordering: .relaxed)
            if entry.holders.value > 1 { counters.revokedWhileHeld.add(1, ordering: .relaxed) }
            retire(entry, frozen: false)
        }
    }

    /// Waits until the invalidations in flight (an `munmap` that returned) are applied and every
    /// teardown queued behind a grace period has run: revoked and evicted regions nobody holds
    /// are then deregistered. Not from inside `withRegistration`.
    public func waitForPendingTeardowns() throws(NotifierError) {
        settleInvalidations()
        try srcu.barrier()
    }

    // MARK: - Shutdown

    /// Revokes every registration, waits for the teardowns that no holder delays, stops the
    /// monitor. Registrations still held are deregistered when released. A second call is
    /// harmless.
    public func shutdown() {
        close(reason: "shutdown() was called")
        try? srcu.barrier()
        monitor.shutdown()
        deviceEvents?.stop()
    }

    /// Revokes everything and refuses later calls with `reason`.
    func close(reason: String) {
        state.withLock { state in
            guard state.closedReason == nil else { return }
            state.closedReason = reason
            isClosed.store(true, ordering: .releasing)
            for entry in state.entries.values {
                unpublish(entry, &state)
                entry.revoked.store(true, ordering: .releasing)
                counters.invalidations.add(1, ordering: .relaxed)
                if entry.holders.value > 1 { counters.revokedWhileHeld.add(1, ordering: .relaxed) }
                retire(entry, frozen: false)
            }
        }
    }
}


/// The interval ops of every cache subscription. A separate object holding the cache weakly,
/// so subscriptions (which the address space keeps) do not keep the cache alive.
final class InvalidationHandler: IntervalNotifierOps {
    private let weakCache = Locked(WeakCache())

    struct WeakCache: Sendable {
        weak var value: RegistrationCache?
    }

    var cache: RegistrationCache? {
        get { weakCache.withLock { $0.value } }
        set { weakCache.withLock { $0.value = newValue } }
    }

    func invalidate(_ subscription: IntervalSubscription, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        if let cache {
            cache.revoke(subscription, sequence: currentSequence, event: range.event)
        } else {
            subscription.setSequence(currentSequence)
        }
        return true
    }
}
