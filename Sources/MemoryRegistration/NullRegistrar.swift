import Synchronization
import Verbs

/// A registrar that does no device work: keys come from a counter. The cache's own costs
/// (index, monitor, teardown) can then be measured and tested without a device, as UCX's
/// rcache is measured with a null registration.
public final class NullRegistrar: MemoryRegistrar {
    private let nextKey = Atomic<UInt32>(1)
    private let live = Atomic<Int>(0)
    public let limits: (maxRegionBytes: UInt64, maxRegions: Int)

    public init(maxRegionBytes: UInt64 = .max, maxRegions: Int = .max) {
        limits = (maxRegionBytes, maxRegions)
    }

    /// Registrations made and not yet deregistered.
    public var liveRegistrations: Int { live.load(ordering: .relaxed) }

    /// The key the next registration will get: every key below it was handed out earlier.
    public var upcomingKey: UInt32 { nextKey.load(ordering: .acquiring) }

    public func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> any RegisteredMemory {
        guard length > 0 else {
            throw VerbsError(call: "null_reg_mr", argument: "length: \(length)", errno: .invalidArgument)
        }
        live.add(1, ordering: .relaxed)
        return NullRegistration(key: nextKey.add(1, ordering: .acquiringAndReleasing).oldValue, owner: self)
    }

    public final class NullRegistration: RegisteredMemory {
        public let lkey: UInt32
        public var rkey: UInt32 { lkey }
        private let owner: NullRegistrar
        private let registered = Atomic<Bool>(true)

        init(key: UInt32, owner: NullRegistrar) {
            lkey = key
            self.owner = owner
        }

        /// False once deregistered: a holder that sees false was handed a torn-down region.
        public var isRegistered: Bool { registered.load(ordering: .acquiring) }

        public func deregister() throws {
            guard registered.exchange(false, ordering: .acquiringAndReleasing) else {
                throw VerbsError(call: "null_dereg_mr", argument: "lkey: \(lkey)",
                                 detail: "the registration was already deregistered")
            }
            owner.live.subtract(1, ordering: .relaxed)
        }
    }
}
