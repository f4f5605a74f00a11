import NotifierEngine

/// The memory monitors of one address space, as the registration cache uses them: the
/// userfaultfd monitor where the process may have one, explicit invalidation always, and any
/// other sources attached.
///
/// Where userfaultfd is refused (no root, `vm.unprivileged_userfaultfd = 0`, no access to
/// `/dev/userfaultfd`, or a kernel without the events) the monitor runs in *explicit-only*
/// mode: `watch` answers `.uncached(reason)` for everything, so the cache registers memory
/// without caching it and says why, and the library stays usable.
public final class MemoryMonitor: Sendable {
    public enum Mode: Sendable, CustomStringConvertible {
        /// userfaultfd, obtained with `privilege`, and what the process's hooks add to it.
        case userfaultfd(UserfaultfdPrivilege, hooks: UserfaultfdMonitor.Hooks)
        /// No userfaultfd: why (the error names `vm.unprivileged_userfaultfd` and `/dev/userfaultfd`).
        case explicitOnly(MonitorError)
        /// userfaultfd ran and failed (`MonitorError.monitorFailed`): everything cached was
        /// revoked, and memory is registered uncached from then on.
        case failed(MonitorError)

        public var description: String {
            switch self {
            case let .userfaultfd(privilege, hooks): return "userfaultfd (\(privilege)); \(hooks)"
            case let .explicitOnly(reason): return "explicit invalidation only: \(reason)"
            case let .failed(reason): return "failed: \(reason)"
            }
        }
    }

    /// What `watch` decided for a range.
    public enum WatchResult: Sendable, Equatable {
        /// Watched: its unmap reaches the engine. Pair with `unwatch`.
        case watched
        /// Not watched: register it uncached (or not at all) and report `reason`.
        case uncached(MonitorError)
    }

    public let space: AddressSpace
    public let userfaultfd: UserfaultfdMonitor?
    private let startMode: Mode
    public let explicit: ExplicitInvalidator
    private let sources = Locked<[any InvalidationSource]>([])

    /// Starts the userfaultfd monitor if the process may, else explicit-only mode.
    /// `useUserfaultfd: false` asks for explicit-only mode directly.
    public init(space: AddressSpace, useUserfaultfd: Bool = true,
                configuration: UserfaultfdMonitor.Configuration = .init()) {
        self.space = space
        explicit = ExplicitInvalidator(space: space)
        if !useUserfaultfd {
            userfaultfd = nil
            startMode = .explicitOnly(.explicitOnlyRequested)
            return
        }
        do {
            let monitor = try UserfaultfdMonitor(space: space, configuration: configuration)
            userfaultfd = monitor
            startMode = .userfaultfd(monitor.privilege, hooks: monitor.hooks)
        } catch {
            userfaultfd = nil
            startMode = .explicitOnly(error)
        }
    }

    /// How invalidations reach the space now: userfaultfd (and the hooks), explicit calls only,
    /// or a userfaultfd monitor that failed.
    public var mode: Mode {
        if let failure = userfaultfd?.failure { return .failed(failure) }
        return startMode
    }

    public var isExplicitOnly: Bool { userfaultfd == nil }

    /// Watches `range` if userfaultfd can; otherwise says why it is not watched. Shared memory
    /// is refused unless `allowingSharedMemory` (see `UserfaultfdMonitor.watch`).
    public func watch(_ range: AddressRange, allowingSharedMemory: Bool = false) -> WatchResult {
        guard let userfaultfd else {
            if case let .explicitOnly(reason) = startMode { return .uncached(reason) }
            return .uncached(.shutDown)
        }
        do {
            try userfaultfd.watch(range, allowingSharedMemory: allowingSharedMemory)
            return .watched
        } catch {
            return .uncached(error)
        }
    }

    /// Undoes one `.watched` answer of `watch(range)`.
    public func unwatch(_ range: AddressRange) throws(MonitorError) {
        try userfaultfd?.unwatch(range)
    }

    /// Explicit invalidation (see `ExplicitInvalidator`).
    public func invalidate(_ range: AddressRange, cause: InvalidationCause) {
        explicit.invalidate(range, cause: cause)
    }

    /// Attaches another source; it feeds this monitor's address space until `shutdown`.
    public func attach(_ source: any InvalidationSource) throws {
        try source.start(feeding: InvalidationSink(space: space, sourceName: source.name))
        sources.withLock { $0.append(source) }
    }

    /// Stops every source and the userfaultfd monitor. Idempotent.
    public func shutdown() {
        var stopping: [any InvalidationSource] = []
        sources.withLock { swap(&$0, &stopping) }
        for source in stopping { source.stop() }
        userfaultfd?.shutdown()
    }
}
