import NotifierEngine

/// One range libfabric's cache subscribed: the engine's interval subscription for it, whose
/// invalidation tells the monitor, which notifies libfabric.
final class LibfabricSubscription: IntervalSubscription, @unchecked Sendable {
    // @unchecked: adds immutable Sendable fields to a base class whose comment proves the rest.
    let owner: LibfabricMonitor

    init(range: AddressRange, owner: LibfabricMonitor) throws(NotifierError) {
        self.owner = owner
        try super.init(space: owner.space, range: range)
    }

    /// Counts itself as notifying and sets the sequence first (a `valid` between this and the
    /// monitor's bookkeeping already answers false), then lets the monitor drop the record and
    /// notify libfabric.
    override func invalidate(_ invalidation: InvalidationRange, currentSequence: UInt64) -> Bool {
        owner.invalidationStarts()
        setSequence(currentSequence)
        owner.invalidated(self)
        return true
    }
}
