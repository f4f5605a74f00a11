import NotifierEngine
import Monitors
import Synchronization
import Verbs

/// Counted registrations of any buffer, cached, revoked when the memory under them changes,
/// registered again on next use, torn down only after every holder and reader is done.
///
/// - Hit: a cached region covers the buffer with at least the asked access.
/// - Miss: see `CacheCore.miss` (the sequence protocol that keeps a registration racing an
///   invalidation from being handed out).
/// - Invalidation: see `CacheCore.invalidate`: every cached region overlapping the range leaves
///   the index at once and is revoked; its deregistration waits for a grace period (readers of
///   `withRegistration`) and for the last `Registration` holding it.
///
/// Every cache in a process shares the process's address space and its one userfaultfd monitor
/// (`AddressSpace.process`, `MemoryMonitor.shared`): two caches over two protection domains
/// both cache and both see every unmap. A cache owns no thread of the engine's (a cache over a
/// protection domain runs one for the device's async events); dropping the last reference to
/// it shuts it down (everything nobody holds is deregistered; held registrations are
/// deregistered when released).
///
/// Overlap policy: no merging. A miss registers exactly the page-aligned buffer; a later
/// buffer inside it hits; one that sticks out gets a region of its own (regions may overlap).
/// Merging (UCX) must deregister the old region while holders may still use it, and build the
/// merged one while holding the lock that lookups need; libfabric removed merging for that
/// reason. Neighbouring buffers cost one region each instead.
public final class RegistrationCache: Sendable {
    @usableFromInline let core: CacheCore
    private let deviceEvents: DeviceEventMonitor?

    /// A cache over a real device: registers through `protectionDomain`, and revokes every
    /// registration if the device reports a fatal error (from the cache's first instant).
    public convenience init(protectionDomain: ProtectionDomain, options: Options = .init()) {
        self.init(registrar: protectionDomain, options: options, monitor: nil, deviceContext: protectionDomain.context)
    }

    /// A cache over any registrar (tests and benchmarks use one that does no device work).
    public convenience init(registrar: any MemoryRegistrar, options: Options = .init()) {
        self.init(registrar: registrar, options: options, monitor: nil, deviceContext: nil)
    }

    /// A cache fed by `monitor` instead of the process's (tests of a monitor that fails).
    init(registrar: any MemoryRegistrar, options: Options, monitor: MemoryMonitor?, deviceContext: DeviceContext?) {
        let source: MemoryMonitor? = switch options.monitoring {
        case .userfaultfd: monitor ?? .shared
        case .explicitOnly: nil
        }
        let core = CacheCore(registrar: registrar, options: options, monitor: source)
        self.core = core
        // The core exists before the device monitor starts, so no event is ever lost.
        deviceEvents = deviceContext.map { context in
            DeviceEventMonitor(context: context) { event in
                if event == .deviceFatal { core.close(reason: "the device reported a fatal error") }
            }
        }
    }

    deinit {
        deviceEvents?.stop()
        core.shutdown(reason: "the RegistrationCache was released")
    }

    public var registrar: any MemoryRegistrar { core.registrar }
    public var options: Options { core.options }

    /// How invalidations reach this cache: userfaultfd (and the hooks), explicit calls only (and
    /// why), or a monitor that failed.
    public var monitoring: MemoryMonitor.Mode {
        core.monitor?.mode ?? .explicitOnly(.explicitOnlyRequested)
    }

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

    /// A counted registration of `length` bytes at `address` with at least `access`. On a hit:
    /// a lookup inside a read section and a reference on the region's count; nothing allocated,
    /// no cache-wide shared write.
    public func register(address: UInt, length: Int, access: AccessFlags) throws(RegistrationError)
        -> Registration
    {
        let end = try core.validate(address: address, length: length, call: "register")
        if let entry = try core.lookupCounted(start: address, end: end, access: access) {
            core.counters.countHit()
            return Registration(address: address, length: length, entry: entry)
        }
        return try core.miss(address: address, end: end, access: access)
    }

    /// Runs `body` with a registration of `buffer` valid inside it. On a hit nothing is
    /// referenced and no shared memory is written: the lookup runs in an SRCU read section and
    /// the region cannot be torn down before the section (the closure) ends. The registration is
    /// lent (`borrowing`, not copyable): it cannot leave the closure, and work posted with its
    /// keys must complete inside it. `body` may block, but a long body delays every teardown.
    ///
    /// Inlinable so that it is specialized in the caller: unspecialized, each call looked up
    /// generic metadata at run time (a third of a hit).
    @inlinable
    public func withRegistration<R>(_ buffer: UnsafeRawBufferPointer, access: AccessFlags,
                                    _ body: (borrowing ScopedRegistration) throws -> R) throws -> R {
        let address = UInt(bitPattern: buffer.baseAddress)
        let end = try core.validate(address: address, length: buffer.count, call: "withRegistration")
        try core.settleInvalidations(call: "withRegistration")
        // An explicit read section, not a closure: a closure made the optimizer retain the SRCU
        // domain around it, an atomic write to a line every thread shares.
        let token = core.readSide.lock()
        if let keys = core.scopedKeys(start: address, end: end, access: access) {
            do {
                let result = try body(ScopedRegistration(address: address, length: buffer.count,
                                                         lkey: keys.lkey, rkey: keys.rkey))
                core.readSide.unlock(token)
                return result
            } catch {
                core.readSide.unlock(token)
                throw error
            }
        }
        core.readSide.unlock(token)
        // A miss: a counted registration for the closure's length (released when it returns,
        // or by its end of scope if the closure throws).
        let registration = try register(address: address, length: buffer.count, access: access)
        let result = try body(ScopedRegistration(address: address, length: buffer.count,
                                                 lkey: registration.lkey, rkey: registration.rkey))
        registration.release()
        return result
    }

    @inlinable
    public func withRegistration<R>(_ buffer: UnsafeMutableRawBufferPointer, access: AccessFlags,
                                    _ body: (borrowing ScopedRegistration) throws -> R) throws -> R {
        try withRegistration(UnsafeRawBufferPointer(buffer), access: access, body)
    }

    /// Tells the cache that `[address, address + length)` changed (explicit monitoring, or an
    /// allocator that recycles memory without unmapping it). Every cache of the process sees it:
    /// they share one address space.
    public func invalidate(address: UInt, length: Int, cause: InvalidationCause = .reused) {
        guard length > 0, let range = try? AddressRange(start: address, length: UInt(length)) else { return }
        ExplicitInvalidator(space: core.space).invalidate(range, cause: cause)
    }

    /// Waits until the invalidations in flight (an `munmap` that returned) are applied and every
    /// region taken out of the cache that nobody holds is deregistered. Not from inside
    /// `withRegistration` or an invalidation callback: it throws `.wouldDeadlock` there.
    public func waitForPendingTeardowns() throws(NotifierError) {
        try core.space.waitWhileWindowOpen(core.space.openWindowSequence)
        try core.waitForTeardowns()
    }

    // MARK: - Shutdown

    /// Revokes every registration, deregisters those nobody holds, refuses later calls. Held
    /// registrations are deregistered when released. A second call is harmless; dropping the
    /// last reference to the cache does the same.
    public func shutdown() {
        core.shutdown(reason: "shutdown() was called")
    }
}
