/// A secondary MMU's view of an address space (the kernel's `struct mmu_notifier` + ops): a
/// registration cache, a device, anything that keeps translations of user memory.
///
/// Callbacks run inside a read section of the space's `SRCUDomain`, so they may block (they
/// deregister memory regions). They must not call `unregister(_:)` on their own space (that
/// waits for the section they run in: it throws `.wouldDeadlock`); `unregisterNoRelease(_:)`
/// plus `SRCUDomain.call(afterGracePeriod:)` is the way for a notifier to drop itself (seed 002).
public protocol MMUNotifier: AnyObject, Sendable {
    /// Translations of `range.range` must stop being used. Return false only when
    /// `range.blockable` is false and the work would block: the invalidation then fails with
    /// `.wouldBlock` and is retried (a refusal of a blockable invalidation is ignored).
    func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool
    /// The change announced by the matching start is complete.
    func invalidateRangeEnd(_ range: InvalidationRange, in space: AddressSpace)
    /// Aging for the LRU: report whether `range` was used since the last call, and clear that.
    func clearYoung(_ range: AddressRange, in space: AddressSpace) -> Bool
    /// Aging for the LRU: report whether `range` was used, without clearing.
    func testYoung(_ range: AddressRange, in space: AddressSpace) -> Bool
    /// The address space is going away: drop everything. Called at most once per registration.
    func release(_ space: AddressSpace)
}

extension MMUNotifier {
    public func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool { true }
    public func invalidateRangeEnd(_ range: InvalidationRange, in space: AddressSpace) {}
    public func clearYoung(_ range: AddressRange, in space: AddressSpace) -> Bool { false }
    public func testYoung(_ range: AddressRange, in space: AddressSpace) -> Bool { false }
    public func release(_ space: AddressSpace) {}
}

/// A notifier shared by every user of one kind in one space (`mmu_notifier_get` / `put`):
/// the first `get` makes it, later ones count, the last `put` unregisters it without calling
/// `release` and calls `free()` after a grace period.
public protocol SharedMMUNotifier: MMUNotifier {
    static func make(for space: AddressSpace) -> Self
    /// Runs on the reclaim thread after the last `put` and a grace period.
    func free()
}

extension SharedMMUNotifier {
    public func free() {}
}

/// One registration of a notifier in a space. `registered` is cleared (under the space's lock)
/// before the grace period that `unregister` waits for; callbacks test it inside their read
/// section, so none starts after that grace period.
final class NotifierEntry: Sendable {
    let notifier: any MMUNotifier
    let registered = Atomic<Bool>(true)
    let releaseClaimed = Atomic<Bool>(false)

    init(_ notifier: any MMUNotifier) { self.notifier = notifier }

    var isRegistered: Bool { registered.load(ordering: .acquiring) }

    /// Callbacks may reach it: registered and not yet released. Tested inside the read section
    /// that runs the callback, which is what lets `unregister`'s grace period cover it.
    var isLive: Bool {
        registered.load(ordering: .acquiring) && !releaseClaimed.load(ordering: .acquiring)
    }

    /// True for exactly one caller: the one that runs `release`.
    func claimRelease() -> Bool {
        !releaseClaimed.exchange(true, ordering: .acquiringAndReleasing)
    }
}

import Synchronization
