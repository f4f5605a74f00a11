#if canImport(Glibc)
import Glibc
#endif
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
/// - `munmap` calls through the C library are intercepted by default (`MunmapHook`): the
///   range is invalidated and unregistered in the calling thread, then unmapped, so the kernel
///   queues no event and the caller does not sleep until the reader reads one. Callbacks then
///   run in that thread. `Configuration.interceptsMunmap = false` leaves every unmap to events.
/// - `watch(range)` registers the range's granules (write-protect mode, never protecting a
///   page, so ordinary faults need no answer) and checks with the kernel that the pages
///   mapped *now* are registered; call it on every cache miss, after `readBegin` (see
///   `watch`). `unwatch(range)` drops the count; the last buffer of a granule unregisters it.
/// - Unwatchable memory throws `.unwatchable(range, reason)`: file-backed, System V shared
///   memory, another userfaultfd's range, hugetlb where unsupported, or not mapped.
/// - fork(): the child inherits no monitoring (EVENT_FORK is not requested, so the kernel
///   clears the child's registrations); the child's unmaps never wait for this thread and
///   the parent's monitoring is unaffected. The descriptor is close-on-exec.
/// - `shutdown()` (also run by deinit) unregisters everything, stops and joins the thread,
///   closes the descriptor and invalidates the whole address space once (events between the
///   last read and the close are lost, so nothing cached may outlive the watch). Idempotent.
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
        /// `munmap` calls made through the C library's symbol are handled in the calling
        /// thread (invalidated, unregistered, then unmapped: no event, no sleep; see
        /// `MunmapHook`). Raw system calls, glibc's own unmaps (`free`), `mmap(MAP_FIXED)`,
        /// `mremap`, `madvise` and `brk` are events either way.
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
    }

    public let space: AddressSpace
    public let granuleSize: UInt
    let pageSize: UInt
    let descriptor: UserfaultfdDescriptor
    let threads: MonitorThreads
    let granules = Locked(GranuleTable())
    let validated: ValidatedGranules
    /// This monitor's part in the process's `munmap` hook; nil when it does not take part.
    let interceptor: UnmapInterceptor?
    let readerPthread = Atomic<UInt>(0)
    let workerPthread = Atomic<UInt>(0)
    let stopped = Atomic<Bool>(false)

    /// How the descriptor was obtained.
    public var privilege: UserfaultfdPrivilege { descriptor.privilege }
    /// UFFD_FEATURE_* bits enabled (UNMAP, REMOVE, REMAP, and WP_HUGETLBFS_SHMEM where offered).
    public var features: UInt64 { descriptor.features }
    /// UFFD_FEATURE_* bits the kernel offers.
    public var offeredFeatures: UInt64 { descriptor.offered }

    public init(space: AddressSpace, configuration: Configuration = Configuration()) throws(MonitorError) {
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let granule = configuration.granuleSize
        guard granule >= page, granule & (granule - 1) == 0 else {
            throw .invalidRange(call: "UserfaultfdMonitor.init", argument: "granuleSize: \(granule)")
        }
        self.space = space
        pageSize = page
        granuleSize = granule
        descriptor = try UserfaultfdDescriptor.open(strategy: configuration.strategy)
        validated = ValidatedGranules(granuleSize: granule)
        do {
            threads = try MonitorThreads(descriptor: descriptor, space: space, validated: validated,
                                         eventsPerRead: configuration.eventsPerRead, slots: configuration.queueSlots,
                                         spinMicroseconds: configuration.spinMicroseconds)
        } catch {
            close(descriptor.fd)
            throw error
        }
        interceptor = configuration.interceptsMunmap
            ? UnmapInterceptor(space: space, descriptor: descriptor, granules: granules, validated: validated,
                               counters: threads.counters, granuleSize: granule)
            : nil
        var worker = pthread_t()
        let workerContext = Unmanaged.passRetained(threads).toOpaque()
        let workerCreated = pthread_create(&worker, nil, { monitorWorkerEntry($0) }, workerContext)
        guard workerCreated == 0 else {
            Unmanaged<MonitorThreads>.fromOpaque(workerContext).release()
            close(descriptor.fd)
            throw .systemCall(call: "pthread_create", argument: "userfaultfd worker", errno: Errno(rawValue: workerCreated))
        }
        workerPthread.store(UInt(worker), ordering: .releasing)
        var reader = pthread_t()
        let readerContext = Unmanaged.passRetained(threads).toOpaque()
        let readerCreated = pthread_create(&reader, nil, { monitorReaderEntry($0) }, readerContext)
        guard readerCreated == 0 else {
            Unmanaged<MonitorThreads>.fromOpaque(readerContext).release()
            threads.queue.stop()
            pthread_join(worker, nil)
            close(descriptor.fd)
            throw .systemCall(call: "pthread_create", argument: "userfaultfd reader", errno: Errno(rawValue: readerCreated))
        }
        readerPthread.store(UInt(reader), ordering: .releasing)
        while !threads.readerReady.load(ordering: .acquiring) { sched_yield() }
        if let interceptor { MunmapHook.add(interceptor) }
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

    public var isRunning: Bool { !threads.finished.load(ordering: .acquiring) && !stopped.load(ordering: .acquiring) }

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
    /// Each successful `watch` needs one `unwatch` of the same range.
    public func watch(_ range: AddressRange) throws(MonitorError) {
        if threads.isReaderThread { throw .calledFromMonitorThread(call: "watch") }
        let pages = try pageRange(range, call: "watch")
        try granules.withLock { table throws(MonitorError) in
            if table.shutDown { throw .shutDown }
            let starts = granuleStarts(pages)
            // No window open (sequence even): the worker has forgotten every granule that an
            // unmap which already returned touched, whether or not the caller did readBegin.
            if space.invalidationSequence & 1 == 0, validated.containsAll(starts),
               starts.allSatisfy({ table.records[$0].map { $0.pieces == nil } ?? false }) {
                for start in starts { table.records[start]?.buffers += 1 }
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
                        table.records[start]?.buffers += 1
                        counted.append(start)
                    }
                } else {
                    for start in starts {
                        var record = try registerGranule(start, piece: pages.clipped(toGranule: start, granuleSize: granuleSize),
                                                         existing: table.records[start], range: range)
                        record.buffers += 1
                        table.records[start] = record
                        counted.append(start)
                    }
                }
                // Registration succeeds over holes: ask whether the buffer's pages are
                // registered now (a hole, or a mapping made after the register, is not).
                var covered = try probe(pages)
                if !covered { covered = try probeEachPage(pages) }
                if covered && isFullyMapped(pages) {
                    for start in starts { validateIfWhole(start, in: &table) }
                    return
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
            if table.shutDown { return }
            let starts = granuleStarts(pages)
            for start in starts where table.records[start] == nil { throw .notWatched(range: range) }
            for start in starts { release(start, in: &table) }
        }
    }

    // MARK: Shutdown

    /// Stops monitoring: every granule is unregistered, the thread reads what is queued and
    /// ends, the descriptor is closed, and the whole address space is invalidated once (a
    /// change between the last read and the close would otherwise go unreported). A second
    /// call does nothing. From an invalidation callback (on the worker) it unregisters and
    /// requests the stop, and the worker finishes it (closes and invalidates) when it ends.
    public func shutdown() {
        if stopped.exchange(true, ordering: .acquiringAndReleasing) { return }
        if let interceptor { MunmapHook.remove(interceptor) }
        granules.withLock { table in
            table.shutDown = true
            validated.removeAll()
            for (start, record) in table.records { unregister(start, record) }
            table.records.removeAll()
        }
        threads.requestStop()
        let reader = readerPthread.load(ordering: .acquiring)
        if reader != 0 { pthread_join(pthread_t(reader), nil) }
        let window = space.beginInvalidation()
        close(descriptor.fd)
        window.invalidate(.everything, event: .explicit)
        window.end()
        if threads.isWorkerThread {
            pthread_detach(pthread_t(workerPthread.load(ordering: .acquiring)))
            return
        }
        let worker = workerPthread.load(ordering: .acquiring)
        if worker != 0 { pthread_join(pthread_t(worker), nil) }
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
            record.pieces = []
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
        if record.pieces?.contains(registered) == false { record.pieces?.append(registered) }
        return record
    }

    /// `piece` with one page more on each side, inside its granule. Registered, the padding
    /// keeps the piece's neighbours registered after an intercepted munmap unregisters the
    /// piece: otherwise the kernel merges the unregistered piece back into an unregistered
    /// neighbour (anonymous memory beside it) and the munmap must split it again, a third more
    /// time (measured: 1.47x an unwatched 4 KiB munmap, against 1.09x in a whole granule).
    /// When a neighbour page cannot be registered (a file mapping) the exact piece is used.
    private func paddedPiece(_ piece: PageRange, granule: UInt) -> PageRange {
        PageRange(start: max(granule, piece.start &- pageSize), end: min(granule &+ granuleSize, piece.end &+ pageSize))
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
    }

    /// Marks a granule registered whole as validated when registered mappings now cover all of
    /// it: no hole (mincore) and every mapping registered (the probe). A granule that fails (the
    /// edge of a mapping, a neighbour of another kind) is asked again only every
    /// `revalidateEvery` watches.
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
        let before = space.invalidationSequence
        guard before & 1 == 0 else { return }  // an invalidation is running: ask next time
        let whole = PageRange(start: start, end: start &+ granuleSize)
        guard isFullyMapped(whole), (try? probe(whole)) == true else {
            record.validationCountdown = GranuleRecord.revalidateEvery
            table.records[start] = record
            return
        }
        validated.insert(start)
        if space.invalidationSequence != before { validated.remove(start) }
    }

    /// False when any page of `pages` is unmapped (mincore answers ENOMEM). The probe cannot
    /// tell: on recent kernels UFFDIO_WRITEPROTECT skips holes between registered mappings
    /// (measured on 6.18), on 6.1 it refuses any range across mappings.
    private func isFullyMapped(_ pages: PageRange) -> Bool {
        let chunkPages = 4096
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: chunkPages) { vector in
            var start = pages.start
            while start < pages.end {
                let length = min(pages.end - start, UInt(chunkPages) * pageSize)
                if mincore(UnsafeMutableRawPointer(bitPattern: start), Int(length), vector.baseAddress) != 0 {
                    if errno == EAGAIN { continue }
                    return false
                }
                start += length
            }
            return true
        }
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
        guard !overflow, length > 0 else { throw .invalidRange(call: call, argument: "\(range)") }
        return PageRange(start: start, end: last & ~(pageSize - 1))
    }

    private func granuleStarts(_ pages: PageRange) -> StrideTo<UInt> { pages.granuleStarts(granuleSize: granuleSize) }

    private func describe(_ start: UInt, _ length: UInt) -> String {
        "start: 0x\(String(start, radix: 16)), length: \(length)"
    }
}
