/// Every way the engine refuses bad input or an unsafe request. Nothing in the engine traps on
/// input: a caller gets one of these instead.
public enum NotifierError: Error, Equatable, Sendable {
    /// A range of length zero where a subscription needs at least one byte.
    case emptyRange
    /// `start + length - 1` does not fit in the address space.
    case rangeOverflow(start: UInt, length: UInt)
    /// The notifier is already registered in this address space.
    case alreadyRegistered
    /// The notifier is not (or no longer) registered in this address space.
    case notRegistered
    /// The interval subscription was already removed (double remove).
    case alreadyRemoved
    /// The interval subscription was already inserted (subscriptions are inserted once).
    case alreadyInserted
    /// `remove` of an interval subscription that was never inserted.
    case notInserted
    /// The subscription belongs to another address space.
    case foreignSubscription
    /// The address space was released: no new notifiers or subscriptions.
    case spaceReleased
    /// A non-blockable invalidation met a callback that must block: retry later, blockable.
    case wouldBlock
    /// The call would wait for a grace period from inside a read section of the same domain,
    /// or from the domain's own reclaim thread: it would wait for itself.
    case wouldDeadlock(String)
    /// A reference count would drop below zero, or was used while frozen.
    case referenceCountMisuse(String)
    /// The OS refused a resource the engine needs (thread, memory).
    case resourceUnavailable(String)
    /// The caller is a `fork()` child of the process whose engine this is: its monitor, threads
    /// and device registrations belong to the parent, and nothing here would ever invalidate.
    case forkedChild
}
