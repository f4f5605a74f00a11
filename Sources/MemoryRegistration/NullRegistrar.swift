import Synchronization
import Verbs

/// A registrar that does no device work: keys come from a counter. The cache's own costs
/// (index, monitor, teardown) can then be measured and tested without a device, as UCX's
/// rcache is measured with a null registration. It allocates nothing per registration.
public final class NullRegistrar: MemoryRegistrar {
    private let nextKey = Atomic<UInt32>(1)
    private let live = Atomic<Int>(0)
    /// Deregistrations to refuse (tests of a device that fails `ibv_dereg_mr`).
    private let refusals = Atomic<Int>(0)
    /// One bit per key handed out: set while registered (keys are sequential, so a bit array).
    private let liveKeys = KeyBits()
    public let limits: (maxRegionBytes: UInt64, maxRegions: Int)

    public init(maxRegionBytes: UInt64 = .max, maxRegions: Int = .max) {
        limits = (maxRegionBytes, maxRegions)
    }

    /// Whether the registration with `lkey` is still registered: a holder that sees false was
    /// handed a region that was torn down under it.
    public func isRegistered(lkey: UInt32) -> Bool { liveKeys.test(lkey) }

    /// Registrations made and not yet deregistered.
    public var liveRegistrations: Int { live.load(ordering: .relaxed) }

    /// The key the next registration will get: every key below it was handed out earlier.
    public var upcomingKey: UInt32 { nextKey.load(ordering: .acquiring) }

    /// Makes the next `count` deregistrations fail, as a device that refuses them would.
    public func refuseDeregistrations(_ count: Int) { refusals.store(count, ordering: .releasing) }

    public func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion {
        guard length > 0 else {
            throw VerbsError(call: "null_reg_mr", argument: "length: \(length)", errno: .invalidArgument)
        }
        let key = nextKey.add(1, ordering: .acquiringAndReleasing).oldValue
        guard liveKeys.set(key) else {
            throw VerbsError(call: "null_reg_mr", argument: "length: \(length)", errno: .noMemory)
        }
        live.add(1, ordering: .relaxed)
        return RegisteredRegion(lkey: key, rkey: key, handle: UInt(key))
    }

    public func deregisterRegion(_ region: RegisteredRegion) throws {
        var pending = refusals.load(ordering: .acquiring)
        while pending > 0 {
            let (exchanged, original) = refusals.compareExchange(expected: pending, desired: pending - 1,
                                                                 ordering: .acquiringAndReleasing)
            if exchanged {
                throw VerbsError(call: "null_dereg_mr", argument: "lkey: \(region.lkey)", errno: .resourceBusy,
                                 detail: "refused on request")
            }
            pending = original
        }
        guard liveKeys.clear(region.lkey) else {
            throw VerbsError(call: "null_dereg_mr", argument: "lkey: \(region.lkey)",
                             detail: "the registration was already deregistered")
        }
        live.subtract(1, ordering: .relaxed)
    }
}

/// A bit per 32-bit key, in chunks made on first use: a lock-free test and set for keys that
/// come from a counter. `@unchecked Sendable`: `chunks` is allocated once and never freed before
/// `deinit`; its slots are atomics, each set once (compare-and-swap) to a chunk of atomics.
private final class KeyBits: @unchecked Sendable {
    static let chunkBits = 1 << 20
    static let chunkCount = 1 << 12
    private let chunks: UnsafeMutablePointer<Atomic<UInt>>

    init() {
        chunks = .allocate(capacity: Self.chunkCount)
        for index in 0..<Self.chunkCount { (chunks + index).initialize(to: Atomic(0)) }
    }

    deinit {
        for index in 0..<Self.chunkCount {
            if let chunk = UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: chunks[index].load(ordering: .acquiring)) {
                chunk.deinitialize(count: Self.chunkBits / 64)
                chunk.deallocate()
            }
        }
        chunks.deinitialize(count: Self.chunkCount)
        chunks.deallocate()
    }

    /// The word holding `key`'s bit, making its chunk if `make`; nil if absent (or no memory).
    private func word(_ key: UInt32, make: Bool) -> UnsafeMutablePointer<Atomic<UInt64>>? {
        let chunkIndex = Int(key) / Self.chunkBits
        var bits = chunks[chunkIndex].load(ordering: .acquiring)
        if bits == 0 {
            guard make else { return nil }
            let made = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: Self.chunkBits / 64)
            for index in 0..<(Self.chunkBits / 64) { (made + index).initialize(to: Atomic(0)) }
            // The chunk's address as the slot's bits: read back only as this same pointer.
            let (exchanged, original) = chunks[chunkIndex].compareExchange(
                expected: 0, desired: UInt(bitPattern: made), ordering: .acquiringAndReleasing)
            if exchanged {
                bits = UInt(bitPattern: made)
            } else {
                made.deinitialize(count: Self.chunkBits / 64)
                made.deallocate()
                bits = original
            }
        }
        guard let chunk = UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: bits) else { return nil }
        return chunk + (Int(key) % Self.chunkBits) / 64
    }

    func set(_ key: UInt32) -> Bool {
        guard let word = word(key, make: true) else { return false }
        word.pointee.bitwiseOr(1 << UInt64(key % 64), ordering: .releasing)
        return true
    }

    /// Clears `key`'s bit; false if it was not set.
    func clear(_ key: UInt32) -> Bool {
        guard let word = word(key, make: false) else { return false }
        let old = word.pointee.bitwiseAnd(~(1 << UInt64(key % 64)), ordering: .acquiringAndReleasing).oldValue
        return old & (1 << UInt64(key % 64)) != 0
    }

    func test(_ key: UInt32) -> Bool {
        guard let word = word(key, make: false) else { return false }
        return word.pointee.load(ordering: .acquiring) & (1 << UInt64(key % 64)) != 0
    }
}
