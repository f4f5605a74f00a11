import MMUNotifier

/// The memory monitors of one address space, as the registration cache uses them: the
/// userfaultfd monitor where the process may have one, explicit invalidation always, and any
/// other sources attached.
///
/// Where userfaultfd is refused (no root, `vm.unprivileged_userfaultfd = 0`, no access to
/// `/dev/userfaultfd`, or a kernel without the events) the monitor runs in *explicit-only*
/// mode: `watch` answers `.uncached(reason)` for everything, so the cache registers memory
/// without caching it and says why, and the library stays usable.
public final class MemoryMonitor: Sendable {
    public enum Mode: Sendable {
        case userfaultfd(UserfaultfdPrivilege)
        /// No userfaultfd: why (the error names `vm.unprivileged_userfaultfd` and `/dev/userfaultfd`).
        case explicitOnly(MonitorError)
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
    public let mode: Mode
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
            mode = .explicitOnly(.explicitOnlyRequested)
            return
        }
        do {
            let monitor = try UserfaultfdMonitor(space: space, configuration: configuration)
            userfaultfd = monitor
            mode = .userfaultfd(monitor.privilege)
        } catch {
            userfaultfd = nil
            mode = .explicitOnly(error)
        }
    }

    public var isExplicitOnly: Bool { userfaultfd == nil }

    /// Watches `range` if userfaultfd can; otherwise says why it is not watched.
    public func watch(_ range: AddressRange) -> WatchResult {
        guard let userfaultfd else {
            if case let .explicitOnly(reason) = mode { return .uncached(reason) }
            return .uncached(.shutDown)
        }
        do {
            try userfaultfd.watch(range)
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
