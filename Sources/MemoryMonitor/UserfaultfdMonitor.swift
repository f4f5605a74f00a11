#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import CShims
import MMUNotifier
import Synchronization
import SystemPackage

/// The userfaultfd memory monitor: feeds the notifier engine an invalidation for every
/// `munmap`, `mmap(MAP_FIXED)` over, `mremap`, `madvise(MADV_DONTNEED / MADV_REMOVE)` and
/// `brk` shrink of watched memory, including ones made by raw system calls that no hook sees.
///
/// Guarantee: once such a call on watched memory has returned, no `readBegin`/`readRetry`
/// lookup of the engine that starts later can see the old pages (see `MonitorThread`).
///
/// - `munmap` calls through the C library are intercepted by default (`MemoryHooks`): the
///   range is invalidated and unregistered in the calling thread, then unmapped, so the kernel
///   queues no event and the caller does not sleep until the reader reads one. Callbacks then
///   run in that thread. `Configuration.interceptsMunmap = false` leaves every unmap to events.
///   `mprotect` taking write access away and `shmat(SHM_REMAP)` over watched memory, which
///   userfaultfd never reports, are hooked the same way; `RDMAMEMORY_HOOKS=off` turns every
///   hook off (`hooks` says so).
/// - `watch(range)` registers the range's granules (write-protect mode, never protecting a
///   page, so ordinary faults need no answer) and checks with the kernel that the pages
///   mapped *now* are registered; call it on every cache miss, after `readBegin` (see
///   `watch`). `unwatch(range)` drops the count; the last buffer of a granule unregisters it.
/// - Unwatchable memory throws `.unwatchable(range, reason)`: shared memory (any `MAP_SHARED`
///   mapping, or a mapping of a file: its pages can change with no event) unless the caller
///   opts in, System V shared memory, another userfaultfd's range, hugetlb where unsupported,
///   or not mapped.
/// - Failure: if the reader or worker thread fails, monitoring stops for good (see
///   `MonitorThreads`): nothing waits for an unread event, every subscriber is invalidated,
///   later watches throw `.monitorFailed`, and `failure` says what happened.
/// - fork(): the child inherits no monitoring (EVENT_FORK is not requested, so the kernel
///   clears the child's registrations); the child's unmaps never wait for this thread and
///   the parent's monitoring is unaffected. The descriptor is close-on-exec.
/// - `shutdown()` (also run by deinit) unregisters everything, stops and joins the reader, ends
///   the userfaultfd context, invalidates the whole address space once (events between the last
///   read and the end are lost, so nothing cached may outlive the watch), joins the worker and
///   only then closes the descriptor. Idempotent.
public final class UserfaultfdMonitor: Sendable {
    public struct Configuration: Sendable {
        /// Registration granule in bytes: a power of two, at least a page. Larger means fewer
        /// VMAs and more neighbours invalidated on an unmap.
        public var granuleSize: UInt = 2 << 20
        public var strategy: UserfaultfdStrategy = .automatic
        /// Events the reader reads per wake-up (each queue slot holds this many).
        public var eventsPerRead: Int = 64
        /// Wake-ups the reader may be ahead of the worker (preallocated slots).
        public var queueSlots: Int = 256
        /// After events, the reader polls without sleeping this long (0: never spins). An
        /// unmapping thread whose event is read before it sleeps returns without a wake-up;
        /// the cost is a busy core for this long after each burst of events.
        public var spinMicroseconds: Int = 0
        /// `munmap` and `mmap(MAP_FIXED)` calls made through the C library's symbols are handled
        /// in the calling thread (invalidated, unregistered, then performed: no event, no sleep;
        /// see `MemoryHooks`). Raw system calls, glibc's own unmaps (`free`), `mremap`,
        /// `madvise` and `brk` are events either way. False: every unmap is an event.
        public var interceptsMunmap: Bool = true
        public init(granuleSize: UInt = 2 << 20, strategy: UserfaultfdStrategy = .automatic,
                    eventsPerRead: Int = 64, queueSlots: Int = 256, spinMicroseconds: Int = 0,
                    interceptsMunmap: Bool = true) {
            self.granuleSize = granuleSize
            self.strategy = strategy
            self.eventsPerRead = eventsPerRead
            self.queueSlots = queueSlots
            self.spinMicroseconds = spinMicroseconds
            self.interceptsMunmap = interceptsMunmap
        }

        static let maxEventsPerRead = 4096
        static let maxQueueSlots = 65536
        static let maxSpinMicroseconds = 10_000_000

        /// Checks every value before any arithmetic uses it.
        func validate(pageSize: UInt) throws(MonitorError) {
            guard granuleSize >= pageSize, granuleSize & (granuleSize - 1) == 0, granuleSize <= 1 << 40 else {
                throw .invalidConfiguration(argument: "granuleSize: \(granuleSize)",
                                            reason: "must be a power of two from the page size (\(pageSize)) to 1 TiB")
            }
            guard (1...Self.maxEventsPerRead).contains(eventsPerRead) else {
                throw .invalidConfiguration(argument: "eventsPerRead: \(eventsPerRead)", reason: "must be 1...\(Self.maxEventsPerRead)")
            }
            guard (1...Self.maxQueueSlots).contains(queueSlots) else {
                throw .invalidConfiguration(argument: "queueSlots: \(queueSlots)", reason: "must be 1...\(Self.maxQueueSlots)")
            }
            guard (0...Self.maxSpinMicroseconds).contains(spinMicroseconds) else {
                throw .invalidConfiguration(argument: "spinMicroseconds: \(spinMicroseconds)",
                                            reason: "must be 0...\(Self.maxSpinMicroseconds)")
            }
        }
    }

    /// How the process's hooks serve this monitor.
    public enum Hooks: Sendable, Equatable, CustomStringConvertible {
        /// `munmap`, `mmap(MAP_FIXED)`, `mremap`, `madvise`, `mprotect`, `pkey_mprotect`, `shmat`
        /// and `shmdt` through the C library are handled in the calling thread.
        case active
        /// The same, except `munmap` and `mmap(MAP_FIXED)`: unmaps are userfaultfd events
        /// (`interceptsMunmap: false`).
        case activeExceptMunmap
        /// `RDMAMEMORY_HOOKS=off`: nothing is hooked. Unmaps are events only (the unmapping
        /// thread sleeps until the reader reads them); `mprotect` and `shmat(SHM_REMAP)` are not
        /// seen at all, so a region registered for write stays writable by the device after
        /// the memory is made read-only.
        case disabledByEnvironment
        /// No slot in the hooks' granule map was free (more than 32 monitors): as disabled.
        case unavailable
        /// Another copy of RDMAMemory's hooks binds the process's calls (the program links the
        /// package and a library carrying its own copy, such as the libfabric preload, is loaded
        /// too): this copy sees no hooked call, so it relies on events alone, as disabled.
        /// Two copies also mean two monitors, which refuse each other's memory (EBUSY): use one.
        case shadowed

        public var description: String {
            switch self {
            case .active: return "munmap, mmap(MAP_FIXED), mremap, madvise, mprotect, shmat and shmdt intercepted in the calling thread"
            case .activeExceptMunmap: return "madvise, mprotect, shmat and shmdt intercepted; unmaps and remaps seen as userfaultfd events"
            case .disabledByEnvironment:
                return "hooks off (RDMAMEMORY_HOOKS=off): unmaps are seen as userfaultfd events only; "
                    + "mprotect and shmat(SHM_REMAP) are not seen, so revoke such memory explicitly"
            case .unavailable:
                return "hooks unavailable (no free slot): unmaps are seen as userfaultfd events only; "
                    + "mprotect and shmat(SHM_REMAP) are not seen"
            case .shadowed:
                return "hooks shadowed by another copy of RDMAMemory in this process: unmaps are seen as "
                    + "userfaultfd events only, and the two monitors refuse each other's memory; load one copy"
            }
        }
    }

    public let space: AddressSpace
    public let granuleSize: UInt
    /// How the process's hooks serve this monitor.
    public let hooks: Hooks
    let pageSize: UInt
    let descriptor: UserfaultfdDescriptor
    let file: UserfaultfdFile
    let threads: MonitorThreads
    let granules = Locked(GranuleTable())
    let validated: ValidatedGranules
    let slot: HookSlot
    /// This monitor's part in the process's hooks; nil when it takes no part.
    let interceptor: HookInterceptor?
    let readerPthread = Atomic<UInt>(0)
    let workerPthread = Atomic<UInt>(0)
    let stopped = Atomic<Bool>(false)

    /// How the descriptor was obtained.
    public var privilege: UserfaultfdPrivilege { descriptor.privilege }
    /// UFFD_FEATURE_* bits enabled (UNMAP, REMOVE, REMAP, and WP_HUGETLBFS_SHMEM where offered).
    public var features: UInt64 { descriptor.features }
    /// UFFD_FEATURE_* bits the kernel offers.
    public var offeredFeatures: UInt64 { descriptor.offered }

    /// Opens a userfaultfd and starts the reader and the worker. Every resource it takes is
    /// given back exactly once if a later step fails (the descriptor by `UserfaultfdFile`, the
    /// hooks' slot, each thread that started), and `shutdown` then finds nothing more to do.
    public convenience init(space: AddressSpace, configuration: Configuration = Configuration()) throws(MonitorError) {
        try self.init(space: space, configuration: configuration, failingAt: nil)
    }

    /// A step of `init` that tests make fail as the OS would (pthread_create answering EAGAIN).
    enum InitStep: Sendable { case workerThread, readerThread }

    init(space: AddressSpace, configuration: Configuration, failingAt failing: InitStep?) throws(MonitorError) {
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        try configuration.validate(pageSize: page)
        self.space = space
        pageSize = page
        granuleSize = configuration.granuleSize
        descriptor = try UserfaultfdDescriptor.open(strategy: configuration.strategy)
        file = UserfaultfdFile(fd: descriptor.fd)
        let slot = MemoryHooks.acquireSlot()
        self.slot = slot
        hooks = slot.isActive ? (configuration.interceptsMunmap ? .active : .activeExceptMunmap)
            : MemoryHooks.disabledByEnvironment ? .disabledByEnvironment : MemoryHooks.shadowed ? .shadowed : .unavailable
        validated = ValidatedGranules(granuleSize: configuration.granuleSize)
        do {
            threads = try MonitorThreads(descriptor: descriptor, file: file, space: space, granules: granules,
                                         validated: validated, slot: slot, eventsPerRead: configuration.eventsPerRead,
                                         slots: configuration.queueSlots,
                                         spinMicroseconds: configuration.spinMicroseconds)
        } catch {
            // `self` is not fully initialized: no deinit will run. The file closes itself.
            if slot.isActive { cmemhooks_slot_release(slot.index) }
            throw error
        }
        interceptor = slot.isActive
            ? HookInterceptor(space: space, interceptsMunmap: configuration.interceptsMunmap, slot: slot,
                              descriptor: descriptor, granules: granules, validated: validated,
                              counters: threads.counters, granuleSize: configuration.granuleSize)
            : nil
        // From here on `self` is whole: a throw runs deinit, whose shutdown() stops what started.
        var worker = pthread_t()
        let workerContext = Unmanaged.passRetained(threads).toOpaque()
        let workerCreated = failing == .workerThread ? EAGAIN
            : pthread_create(&worker, nil, { monitorWorkerEntry($0) }, workerContext)
        guard workerCreated == 0 else {
            Unmanaged<MonitorThreads>.fromOpaque(workerContext).release()
            throw .systemCall(call: "pthread_create", argument: "userfaultfd worker", errno: Errno(rawValue: workerCreated))
        }
        workerPthread.store(UInt(worker), ordering: .releasing)
        var reader = pthread_t()
        let readerContext = Unmanaged.passRetained(threads).toOpaque()
        let readerCreated = failing == .readerThread ? EAGAIN
            : pthread_create(&reader, nil, { monitorReaderEntry($0) }, readerContext)
        guard readerCreated == 0 else {
            Unmanaged<MonitorThreads>.fromOpaque(readerContext).release()
            throw .systemCall(call: "pthread_create", argument: "userfaultfd reader", errno: Errno(rawValue: readerCreated))
        }
        readerPthread.store(UInt(reader), ordering: .releasing)
        while !threads.readerReady.load(ordering: .acquiring) { sched_yield() }
        if let interceptor { MemoryHooks.add(interceptor) }
    }

    deinit { shutdown() }

    public var statistics: MonitorStatistics { threads.counters.snapshot }

    /// Granules currently registered (whole or piecewise).
    public var watchedGranuleCount: Int { granules.withLock { $0.records.count } }

    /// Granules found wholly registered, where a watch issues no ioctl (see `ValidatedGranules`).
    public var validatedGranuleCount: Int { validated.count }

    /// Buffers counted in the granules overlapping `range` (for tests and diagnostics).
    public func watchCount(in range: AddressRange) -> Int {
        guard let pages = try? pageRange(range, call: "watchCount") else { return 0 }
        return granules.withLock { table in
            granuleStarts(pages).reduce(0) { $0 + (table.records[$1]?.buffers ?? 0) }
        }
    }

    public var isRunning: Bool {
        !threads.finished.load(ordering: .acquiring) && !stopped.load(ordering: .acquiring)
            && !threads.failed.load(ordering: .acquiring)
    }

    /// Why monitoring stopped on its own (a thread failed), or nil.
    public var failure: MonitorError? { threads.terminationReason ?? granules.withLock { $0.failure } }

    /// Makes the reader or the worker fail at its next step, as a real failure would (tests).
    func injectFailure(_ failure: MonitorThreads.InjectedFailure) { threads.inject(failure) }

    /// Holds (true) or lets go (false) the worker before it invalidates what was read (tests).
    func holdWorker(_ held: Bool) { threads.workerGate.store(held, ordering: .releasing) }

    // MARK: watch / unwatch

    /// Watches `range`: registers its granules (again: the kernel skips what is registered
    /// already, registers mappings made since the last watch, e.g. `munmap` + `mmap` at the
    /// same address, and answers EBUSY if another userfaultfd owns one), counts it, and asks
    /// the kernel whether the pages mapped now are registered. Two ioctls and a count; no
    /// VMA splits once a granule is registered. In a granule found wholly registered, with no
    /// unmap or remap there since, only the count (see `ValidatedGranules`).
    ///
    /// Order on a cache miss: `readBegin`, then `watch`, then `ibv_reg_mr`, then `readRetry`.
    /// The probe makes the watch exact at the moment it returns; any change after it is an
    /// event of a registered mapping, which reaches the engine, so `readRetry` catches it.
    /// (A watch *before* `readBegin` alone leaves a gap: munmap + mmap between the two gives
    /// an unwatched mapping whose later unmap nobody reports.) Calling it before as well is
    /// harmless: it is counted twice and needs two `unwatch` calls.
    ///
    /// Shared memory (any `MAP_SHARED` mapping, or a mapping of a file) is refused with
    /// `.unwatchable(range, .sharedMemory(...))`: its pages can be replaced by truncation, hole
    /// punching or another process with no event (see `UnwatchableClassifier`). The check runs
    /// when the buffer's mapping is registered, not in a validated granule (which holds private
    /// anonymous memory only). `allowingSharedMemory: true` watches it anyway: only for memory
    /// this process owns alone and invalidates explicitly around every truncation.
    ///
    /// Each successful `watch` needs one `unwatch` of the same range.
    public func watch(_ range: AddressRange, allowingSharedMemory: Bool = false) throws(MonitorError) {
        if threads.isReaderThread { throw .calledFromMonitorThread(call: "watch") }
        let pages = try pageRange(range, call: "watch")
        try granules.withLock { table throws(MonitorError) in
            if let failure = table.failure ?? threads.terminationReason { throw failure }
            if table.shutDown { throw .shutDown }
            let starts = granuleStarts(pages)
            // No window open (sequence even): the worker has forgotten every granule that an
            // unmap which already returned touched, whether or not the caller did readBegin.
            if space.openWindowSequence & 1 == 0, validated.containsAll(starts),
               starts.allSatisfy({ table.records[$0].map { $0.pieces == nil } ?? false }) {
                for start in starts { table.records.update(start) { $0.buffers += 1 } }
                threads.counters.watchesWithoutIoctl.add(1, ordering: .relaxed)
                return
            }
            var counted: [UInt] = []
            do throws(MonitorError) {
                // Registering again is what checks ownership (EBUSY if another userfaultfd took
                // a mapping here since) and registers mappings made since the last watch; the
                // kernel skips VMAs registered already, so nothing splits. A buffer over many
                // granules that were all registered whole takes one ioctl for all of them.
                let first = pages.start & ~(granuleSize - 1)
                let span = (pages.end &- first &+ granuleSize &- 1) & ~(granuleSize - 1)
                let allWhole = starts.allSatisfy { start in table.records[start].map { $0.pieces == nil } ?? false }
                if allWhole && span > granuleSize && descriptor.register(start: first, length: span) == nil {
                    for start in starts {
                        table.records.update(start) { $0.buffers += 1 }
                        counted.append(start)
                    }
                } else {
                    for start in starts {
                        let existing = table.records[start]
                        // Counted in the hooks' map before the kernel registers anything.
                        if existing == nil, !slot.adjust(granule: start, size: granuleSize, registered: 1) {
                            throw .systemCall(call: "cmemhooks_slot_adjust", argument: describe(start, granuleSize), errno: .noMemory)
                        }
                        var record: GranuleRecord
                        do throws(MonitorError) {
                            record = try registerGranule(start, piece: pages.clipped(toGranule: start, granuleSize: granuleSize),
                                                         existing: existing, range: range)
                        } catch {
                            if existing == nil { _ = slot.adjust(granule: start, size: granuleSize, registered: -1) }
                            throw error
                        }
                        record.buffers += 1
                        table.records[start] = record
                        counted.append(start)
                    }
                }
                // Registration succeeds over holes: ask whether the buffer's pages are
                // registered now (a hole, or a mapping made after the register, is not).
                var covered = try probe(pages)
                if !covered { covered = try probeEachPage(pages) }
                if covered {
                    switch UnwatchableClassifier.inspect(start: pages.start, end: pages.end, pageSize: pageSize) {
                    case .hole:
                        break
                    case .shared(let reason) where !allowingSharedMemory:
                        throw .unwatchable(range: range, reason: reason)
                    case .shared, .privateAnonymous:
                        for start in starts { validateIfWhole(start, in: &table) }
                        return
                    }
                }
                throw .unwatchable(range: range, reason: UnwatchableClassifier.reason(
                    start: pages.start, end: pages.end, errno: .noSuchFileOrDirectory))
            } catch {
                for start in counted { release(start, in: &table) }
                throw error
            }
        }
    }

    /// Drops one count of `range` (a range a successful `watch` counted); the last buffer of a
    /// granule unregisters it. Callable from invalidation callbacks (they run on the worker).
    public func unwatch(_ range: AddressRange) throws(MonitorError) {
        if threads.isReaderThread { throw .calledFromMonitorThread(call: "unwatch") }
        let pages = try pageRange(range, call: "unwatch")
        try granules.withLock { table throws(MonitorError) in
            if table.shutDown || table.failure != nil { return }
            let starts = granuleStarts(pages)
            for start in starts where table.records[start] == nil { throw .notWatched(range: range) }
            for start in starts { release(start, in: &table) }
        }
    }

    // MARK: Shutdown

    /// Stops monitoring: every granule is unregistered, the reader reads what is queued and
    /// ends, the userfaultfd context ends (a thread still waiting for an unread event wakes),
    /// the whole address space is invalidated once (a change between the last read and the end
    /// would otherwise go unreported), the worker is joined, and only then is the descriptor
    /// closed. A second call does nothing. From an invalidation callback (on the worker) the
    /// worker cannot be joined: it closes the descriptor itself when its loop ends.
    public func shutdown() {
        if stopped.exchange(true, ordering: .acquiringAndReleasing) { return }
        granules.withLock { table in
            table.shutDown = true
            validated.removeAll()
            table.removeAllRecords(slot: slot, granuleSize: granuleSize) { start, record in unregister(start, record) }
        }
        if let interceptor { MemoryHooks.remove(interceptor) }
        threads.requestStop()
        let reader = readerPthread.exchange(0, ordering: .acquiringAndReleasing)
        if reader != 0 { pthread_join(pthread_t(reader), nil) } else { threads.queue.stop() }
        let window = space.beginInvalidation()
        file.releaseContext()
        window.invalidate(.everything, event: .explicit)
        window.end()
        let worker = workerPthread.exchange(0, ordering: .acquiringAndReleasing)
        if worker != 0 && threads.isWorkerThread {
            threads.closeWhenWorkerEnds.store(true, ordering: .releasing)
            pthread_detach(pthread_t(worker))
            return
        }
        if worker != 0 { pthread_join(pthread_t(worker), nil) }
        file.close()
    }

    // MARK: Internals (granule lock held)

    private func registerGranule(_ start: UInt, piece: PageRange, existing: GranuleRecord?,
                                 range: AddressRange) throws(MonitorError) -> GranuleRecord {
        var record = existing ?? GranuleRecord(buffers: 0, pieces: nil)
        if record.pieces == nil {
            let failure = descriptor.register(start: start, length: granuleSize)
            if failure == nil { return record }
            if failure != .invalidArgument && failure != .resourceBusy {
                throw .systemCall(call: "ioctl(UFFDIO_REGISTER)", argument: describe(start, granuleSize),
                                  errno: failure ?? .invalidArgument)
            }
            // A neighbour in the granule cannot be registered: register the buffer's pages only.
            if existing != nil {
                // The granule was registered whole before: keep it counted as whole, and add the piece.
                if let failure = descriptor.register(start: piece.start, length: piece.length) {
                    throw .unwatchable(range: range, reason: UnwatchableClassifier.reason(
                        start: piece.start, end: piece.end, errno: failure))
                }
                return record
            }
            record.pieces = RegisteredPieces()
        }
        let padded = paddedPiece(piece, granule: start)
        var registered = padded
        if padded == piece || descriptor.register(start: padded.start, length: padded.length) != nil {
            registered = piece
            if let failure = descriptor.register(start: piece.start, length: piece.length) {
                throw .unwatchable(range: range, reason: UnwatchableClassifier.reason(
                    start: piece.start, end: piece.end, errno: failure))
            }
        }
        record.pieces?.insert(registered)
        return record
    }

    /// `piece` with one page more on each side, inside its granule. Registered, the padding
    /// keeps the piece's neighbours registered after an intercepted munmap unregisters the
    /// piece: otherwise the kernel merges the unregistered piece back into an unregistered
    /// neighbour (anonymous memory beside it) and the munmap must split it again, a third more
    /// time (measured: 1.47x an unwatched 4 KiB munmap, against 1.09x in a whole granule).
    /// When a neighbour page cannot be registered (a file mapping) the exact piece is used.
    private func paddedPiece(_ piece: PageRange, granule: UInt) -> PageRange {
        // No wrapping below the first granule: a piece at address 0's page has no page before it.
        PageRange(start: piece.start >= granule + pageSize ? piece.start - pageSize : granule,
                  end: min(granule + granuleSize, piece.end + pageSize))
    }

    /// True when every page of `pages` is registered now. EAGAIN (an event is pending and not
    /// yet read) waits for the monitor thread, which never waits for this lock.
    private func probe(_ pages: PageRange) throws(MonitorError) -> Bool {
        for attempt in 0... {
            guard let failure = descriptor.isRegistered(start: pages.start, length: pages.length) else { return true }
            if failure == .noSuchFileOrDirectory { return false }
            if failure == .resourceTemporarilyUnavailable && attempt < 1_000_000 {
                sched_yield()
                continue
            }
            throw .systemCall(call: "ioctl(UFFDIO_WRITEPROTECT)", argument: describe(pages.start, pages.length) + ", mode: 0",
                              errno: failure)
        }
        return false
    }

    /// Linux 6.1 answers the probe only for a range inside one VMA: a buffer across VMAs
    /// is checked page by page.
    private func probeEachPage(_ pages: PageRange) throws(MonitorError) -> Bool {
        if pages.length == pageSize { return false }
        var page = pages.start
        while page < pages.end {
            if !(try probe(PageRange(start: page, end: page + pageSize))) { return false }
            page += pageSize
        }
        return true
    }

    private func release(_ start: UInt, in table: inout GranuleTable) {
        guard var record = table.records[start] else { return }
        record.buffers -= 1
        if record.buffers > 0 {
            table.records[start] = record
            return
        }
        table.records[start] = nil
        validated.remove(start)  // before the unregister makes it untrue
        unregister(start, record)
        _ = slot.adjust(granule: start, size: granuleSize, registered: -1)  // after: see `HookSlot`
    }

    /// Marks a granule registered whole as validated when registered mappings now cover all of
    /// it: every mapping registered (the probe) and all of it private anonymous memory, with no
    /// hole. A granule that fails (the edge of a mapping, a neighbour of another kind) is asked
    /// again only every `revalidateEvery` watches.
    ///
    /// An unmap racing with the checks is caught either way: its window opens before its event
    /// is read and the worker forgets the granule only after that, so either the sequence moved
    /// between `before` and the re-check (we take the mark back) or the worker's forget comes
    /// after our insert (and removes it).
    private func validateIfWhole(_ start: UInt, in table: inout GranuleTable) {
        guard var record = table.records[start], record.pieces == nil else { return }
        if record.validationCountdown > 0 {
            record.validationCountdown -= 1
            table.records[start] = record
            return
        }
        let before = space.openWindowSequence
        guard before & 1 == 0 else { return }  // an invalidation is running: ask next time
        let whole = PageRange(start: start, end: start &+ granuleSize)
        // Only private anonymous memory may skip later checks: a watch in a validated granule
        // does not look at what is mapped there.
        guard (try? probe(whole)) == true,
              UnwatchableClassifier.inspect(start: whole.start, end: whole.end, pageSize: pageSize) == .privateAnonymous else {
            record.validationCountdown = GranuleRecord.revalidateEvery
            table.records[start] = record
            return
        }
        validated.insert(start)
        if space.openWindowSequence != before { validated.remove(start) }
    }

    /// Errors are ignored: the range may be unmapped already, which unregistered it.
    private func unregister(_ start: UInt, _ record: GranuleRecord) {
        if let pieces = record.pieces {
            for piece in pieces { _ = descriptor.unregister(start: piece.start, length: piece.length) }
        } else {
            _ = descriptor.unregister(start: start, length: granuleSize)
        }
    }

    private func pageRange(_ range: AddressRange, call: String) throws(MonitorError) -> PageRange {
        guard !range.isEmpty, let length = range.length else {
            throw .invalidRange(call: call, argument: "\(range)")
        }
        let start = range.start & ~(pageSize - 1)
        let (last, overflow) = range.last.addingReportingOverflow(pageSize)
        // Above 2^57 no Linux process maps anything (5-level paging's limit): such a range is a
        // mistake, and walking its granules would take hours.
        guard !overflow, length > 0, range.last < Self.userSpaceEnd else {
            throw .invalidRange(call: call, argument: "\(range)")
        }
        return PageRange(start: start, end: last & ~(pageSize - 1))
    }

    /// The end of any Linux process's address space (x86-64 and arm64 with 5-level paging, 2^57).
    static let userSpaceEnd: UInt = 1 << 57

    private func granuleStarts(_ pages: PageRange) -> StrideTo<UInt> { pages.granuleStarts(granuleSize: granuleSize) }

    private func describe(_ start: UInt, _ length: UInt) -> String {
        "start: 0x\(String(start, radix: 16)), length: \(length)"
    }
}
