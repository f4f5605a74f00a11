#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import CShims
import NotifierEngine
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
        /// Granules kept registered after their last buffer went, at most (the oldest goes
        /// first): a buffer freed and another allocated or mapped in the same place is then
        /// watched without registering and checking the granule again (the process-wide monitor
        /// keeps 64). The price: an idle granule's mappings stay registered, so an unmap there
        /// that no hook sees (glibc's `free()` of a large block, `brk`) is an event the unmapping
        /// thread waits for. 0: the last unwatch unregisters at once.
        public var idleGranules: Int = 0
        public init(granuleSize: UInt = 2 << 20, strategy: UserfaultfdStrategy = .automatic,
                    eventsPerRead: Int = 64, queueSlots: Int = 256, spinMicroseconds: Int = 0,
                    interceptsMunmap: Bool = true, idleGranules: Int = 0) {
            self.granuleSize = granuleSize
            self.strategy = strategy
            self.eventsPerRead = eventsPerRead
            self.queueSlots = queueSlots
            self.spinMicroseconds = spinMicroseconds
            self.interceptsMunmap = interceptsMunmap
            self.idleGranules = idleGranules
        }

        static let maxEventsPerRead = 4096
        static let maxQueueSlots = 65536
        static let maxSpinMicroseconds = 10_000_000
        static let maxIdleGranules = 65536

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
            guard (0...Self.maxIdleGranules).contains(idleGranules) else {
                throw .invalidConfiguration(argument: "idleGranules: \(idleGranules)", reason: "must be 0...\(Self.maxIdleGranules)")
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
    /// The granule state's one owner: what is registered, what needs no ioctl, the hooks' slot.
    let granules: GranuleWatch
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
        hooks = slot.isActive ? (configuration.interceptsMunmap ? .active : .activeExceptMunmap)
            : MemoryHooks.disabledByEnvironment ? .disabledByEnvironment : MemoryHooks.shadowed ? .shadowed : .unavailable
        granules = GranuleWatch(descriptor: descriptor, space: space, granuleSize: configuration.granuleSize,
                                pageSize: page, slot: slot, idleLimit: configuration.idleGranules)
        do {
            threads = try MonitorThreads(descriptor: descriptor, file: file, space: space, granules: granules,
                                         eventsPerRead: configuration.eventsPerRead, slots: configuration.queueSlots,
                                         spinMicroseconds: configuration.spinMicroseconds)
        } catch {
            // `self` is not fully initialized: no deinit will run. The file closes itself.
            if slot.isActive { cmemhooks_slot_release(slot.index) }
            throw error
        }
        interceptor = slot.isActive
            ? HookInterceptor(space: space, interceptsMunmap: configuration.interceptsMunmap, granules: granules)
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

    public var statistics: MonitorStatistics { granules.counters.snapshot }

    /// Granules currently registered (whole or piecewise).
    public var watchedGranuleCount: Int { granules.watchedGranuleCount }

    /// Granules found wholly registered, where a watch issues no ioctl (see `KnownMemory`).
    public var validatedGranuleCount: Int { granules.known.validatedCount }

    /// True when `range` lies inside a private anonymous mapping the hooked `mmap` was seen
    /// making that no change has touched since (the newest 256 are kept, process-wide): a watch
    /// there registers at most once, with no probe or query (`GranuleWatch.watchKnownMemory`).
    public func knowsMapping(of range: AddressRange) -> Bool {
        guard let pages = try? pageRange(range, call: "knowsMapping") else { return false }
        var mapping = cmemhooks_known_mapping()
        return cmemhooks_known_mapping_find(pages.start, pages.end, &mapping) != 0
    }

    /// Granules kept registered with no buffer (`Configuration.idleGranules`).
    public var idleGranuleCount: Int { granules.idleGranuleCount }

    /// Unregisters every granule kept registered with no buffer now (before another
    /// userfaultfd, or a `fork` child that should not inherit the registrations, needs them).
    public func releaseIdleGranules() { granules.releaseIdleGranules() }

    /// Buffers counted in the granules overlapping `range` (for tests and diagnostics).
    public func watchCount(in range: AddressRange) -> Int {
        guard let pages = try? pageRange(range, call: "watchCount") else { return 0 }
        return granules.watchCount(in: pages)
    }

    public var isRunning: Bool {
        !threads.finished.load(ordering: .acquiring) && !stopped.load(ordering: .acquiring)
            && !threads.failed.load(ordering: .acquiring)
    }

    /// Why monitoring stopped on its own (a thread failed), or nil.
    public var failure: MonitorError? { threads.terminationReason ?? granules.failure }

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
    /// unmap or remap there since, only the count; in a mapping the hooked mmap made, the count
    /// and at most one register (see `KnownMemory` and `GranuleWatch.watchKnownMemory`).
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
        // A load first: every miss asks, and a monitor almost never fails.
        if threads.failed.load(ordering: .acquiring), let failure = threads.terminationReason { throw failure }
        try granules.watch(pages, range: range, allowingSharedMemory: allowingSharedMemory)
    }

    /// Drops one count of `range` (a range a successful `watch` counted); the last buffer of a
    /// granule unregisters it. Callable from invalidation callbacks (they run on the worker).
    public func unwatch(_ range: AddressRange) throws(MonitorError) {
        if threads.isReaderThread { throw .calledFromMonitorThread(call: "unwatch") }
        try granules.unwatch(try pageRange(range, call: "unwatch"), range: range)
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
        granules.shutDown()
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

    // MARK: Internals

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
}
