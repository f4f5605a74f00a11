import NotifierEngine

/// A source of invalidations other than userfaultfd (a GPU allocator, a custom pool): the
/// small protocol such a source implements to plug into a `MemoryMonitor`.
///
/// The contract, the same one the userfaultfd monitor keeps: once the source's memory change
/// has become visible to the application (the free/unmap call returned), its invalidation has
/// at least *started* through the sink, and it completes without waiting for any lock that the
/// application may hold across that change.
public protocol InvalidationSource: AnyObject, Sendable {
    /// A short name for diagnostics ("cuda", "pool").
    var name: String { get }
    /// Begin delivering invalidations into `sink`. Called once.
    func start(feeding sink: InvalidationSink) throws
    /// Stop delivering; after it returns the source never uses `sink` again.
    func stop()
}

/// What a source feeds: the engine's two invalidation forms, with no other capability.
public struct InvalidationSink: Sendable {
    let space: AddressSpace
    public let sourceName: String

    init(space: AddressSpace, sourceName: String) {
        self.space = space
        self.sourceName = sourceName
    }

    /// A change that already happened (or is made visible only after this returns).
    public func invalidate(_ range: AddressRange, cause: InvalidationCause) {
        space.invalidate(range, event: cause.event)
    }

    /// For a source that, like userfaultfd, learns the ranges only after it must make lookups
    /// wait: open the window first, then find out what changed, invalidate, and end it.
    public func beginInvalidation() -> InvalidationWindow {
        space.beginInvalidation()
    }
}
