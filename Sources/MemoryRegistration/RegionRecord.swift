/// What a lookup needs of one cached registration, as plain values: readers copy it out of the
/// index without touching any reference count (no shared cache line written on a hit).
public struct RegionRecord: Sendable, Hashable {
    /// First byte the registration covers.
    public var start: UInt
    /// One past the last byte.
    public var end: UInt
    /// The verbs access flags it was registered with (`IBV_ACCESS_*` bits).
    public var access: UInt32
    public var lkey: UInt32
    public var rkey: UInt32
    /// Identifies the owning cache entry (its `Unmanaged` bits): how a writer removes exactly
    /// this record, and how a counted lookup finds the entry to take a reference on.
    public var owner: UInt

    public init(start: UInt, end: UInt, access: UInt32, lkey: UInt32, rkey: UInt32, owner: UInt) {
        self.start = start
        self.end = end
        self.access = access
        self.lkey = lkey
        self.rkey = rkey
        self.owner = owner
    }

    /// Whether this registration serves `[start, end)` with at least `access`.
    @inline(__always)
    func covers(start wantedStart: UInt, end wantedEnd: UInt, access wanted: UInt32) -> Bool {
        start <= wantedStart && wantedEnd <= end && access & wanted == wanted
    }
}
