import NotifierEngine

/// Why an application or allocator says memory changed. Each maps to the engine's event so a
/// cache can treat it like the kernel-reported one.
public enum InvalidationCause: Sendable, Hashable {
    /// The memory was (or is about to be) unmapped or returned to the system.
    case unmapped
    /// Its pages were discarded (madvise-like); the addresses stay mapped.
    case pagesDiscarded
    /// It moved elsewhere (mremap-like): the old range is gone.
    case moved
    /// An allocator reuses the range for something else (free-list recycling, a pool reset).
    case reused
    /// Its protection changed.
    case protectionChanged
    /// Anything else, with a word for diagnostics.
    case other(String)

    public var event: InvalidationEvent {
        switch self {
        case .unmapped: return .unmap
        case .pagesDiscarded: return .remove
        case .moved: return .remap
        case .protectionChanged: return .protectionChange
        case .reused, .other: return .explicit
        }
    }
}

/// Explicit invalidation, for applications and allocators that manage memory themselves, and
/// for memory userfaultfd cannot watch (System V shared memory: `shmdt` sends no event).
///
/// Call `invalidate` *after* the change and before the memory is handed to anyone else: when
/// it returns, every lookup that starts later sees the invalidation (the engine's sequence
/// turned odd and even again, and every overlapping subscriber was called). For a change you
/// are about to make, `invalidateAround(_:cause:change:)` keeps lookups waiting across it.
public struct ExplicitInvalidator: Sendable {
    public let space: AddressSpace

    public init(space: AddressSpace) { self.space = space }

    public func invalidate(_ range: AddressRange, cause: InvalidationCause) {
        space.invalidate(range, event: cause.event)
    }

    /// Starts the invalidation, runs `change` (unmap, shmdt, pool reset) while overlapping
    /// lookups wait, then ends it: no lookup can slip between the change and its invalidation.
    /// `change` must not wait for a lookup of this range.
    public func invalidateAround<R, E: Error>(_ range: AddressRange, cause: InvalidationCause,
                                              change: () throws(E) -> R) throws(E) -> R {
        // Blockable: the start cannot be refused.
        guard let started = try? space.invalidateRangeStart(range, event: cause.event) else {
            return try change()
        }
        do {
            let result = try change()
            started.end()
            return result
        } catch {
            started.end()
            throw error
        }
    }
}
