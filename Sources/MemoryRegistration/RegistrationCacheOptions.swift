#if canImport(Glibc)
import Glibc
#endif
import Verbs

extension RegistrationCache {
    /// How a cache watches memory, how much it may hold, and what access it registers.
    public struct Options: Sendable {
        /// Where invalidations come from.
        public enum Monitoring: Sendable, Equatable {
            /// userfaultfd (root, or `UFFD_USER_MODE_ONLY`), plus explicit `invalidate` calls.
            /// Falls back to explicit-only, and says so in `RegistrationCache.monitoring`.
            case userfaultfd
            /// Only `invalidate(...)` calls: for allocators that know when their memory goes.
            /// Memory is still cached; the application promises to report every change.
            case explicitOnly
        }

        /// What access a miss registers.
        public enum AccessPolicy: Sendable, Equatable {
            /// Exactly what was asked: another access to the same buffer is another region.
            case asRequested
            /// The asked access plus `extra` where the memory allows it (falls back to the
            /// asked access on read-only memory), so later requests with other access hit.
            case widened(by: AccessFlags)
        }

        public var monitoring: Monitoring = .userfaultfd
        /// Regions registered with the device at most: cached ones, and those taken out of the
        /// cache that still wait for their teardown or their last holder; nil: half the device's
        /// `max_mr`, at most 10^6.
        public var maxRegions: Int? = nil
        /// Pinned bytes at most (cached, revoked-but-held included); nil: three quarters of
        /// RLIMIT_MEMLOCK when it is finite and the process is not root (root may pin beyond
        /// it), else the device's `max_mr_size`. A request larger than this is registered
        /// uncached.
        public var maxPinnedBytes: Int? = nil
        public var accessPolicy: AccessPolicy = .asRequested
        /// Registrations discarded because an invalidation raced them, before giving up.
        public var maxAttempts: Int = 8
        /// Cache shared memory too. By default every `MAP_SHARED` mapping (memfd, tmpfs and
        /// `/dev/shm` files, `MAP_SHARED | MAP_ANONYMOUS`, shared `/dev/zero`) and every mapping
        /// of a file is registered uncached, with a reason: its pages can be replaced with no
        /// event userfaultfd or a hook could see (an `ftruncate` shrink or `fallocate` hole
        /// punch through any descriptor, by any process; another process's `MADV_REMOVE`), and a
        /// cached region would then keep the old pages, so RDMA would silently miss the memory.
        ///
        /// Risk of `true`: correct only if this process owns the memory alone and calls
        /// `invalidate(address:length:)` after every truncation, hole punch or replacement of its
        /// pages, by anyone, before the memory is used for RDMA again (a call made before the
        /// change lets a miss in between register the old pages; `ExplicitInvalidator`'s
        /// `invalidateAround` covers both sides). A forgotten call is a stale region: data lost
        /// without an error.
        public var cachesSharedMemory = false

        public init() {}
    }

    /// The limits a cache with `options` would hold over a device with these limits, in this
    /// process (its RLIMIT_MEMLOCK and whether it is root), and what bounds the pinned bytes: what
    /// `rdmamemory info` shows, so a user can see why a cache evicts before they guess.
    public struct ResolvedLimits: Sendable, Equatable {
        /// What decided `maxPinnedBytes`.
        public enum PinnedBytesBound: Sendable, Equatable {
            /// `Options.maxPinnedBytes`.
            case option
            /// Three quarters of RLIMIT_MEMLOCK's soft limit (a process that is not root).
            case memlock(softLimit: UInt64)
            /// The device's `max_mr_size` (root, or an unlimited RLIMIT_MEMLOCK).
            case device
        }

        public var maxRegions: Int
        public var maxPinnedBytes: Int
        public var pinnedBytesBound: PinnedBytesBound
    }

    /// The limits a cache created now with `options` would use over a device whose largest region
    /// is `maxRegionBytes` and that holds `maxRegions` regions (`ibv_device_attr.max_mr_size`,
    /// `max_mr`).
    public static func resolvedLimits(options: Options = .init(), deviceMaxRegionBytes: UInt64,
                                      deviceMaxRegions: Int) -> ResolvedLimits {
        let limits = Limits(options, device: (deviceMaxRegionBytes, deviceMaxRegions))
        return ResolvedLimits(maxRegions: limits.maxRegions, maxPinnedBytes: limits.maxPinnedBytes,
                              pinnedBytesBound: limits.pinnedBytesBound)
    }

    /// The limits in force, from the options and the device, and the slack eviction keeps free
    /// below each (1/8: see `CacheCore.makeRoom`).
    struct Limits: Sendable {
        var maxRegions: Int
        var maxPinnedBytes: Int
        var pinnedBytesBound: ResolvedLimits.PinnedBytesBound
        var regionSlack: Int { maxRegions / 8 }
        var byteSlack: Int { maxPinnedBytes / 8 }

        init(_ options: Options, device: (maxRegionBytes: UInt64, maxRegions: Int)) {
            self.init(options, device: device, memlock: Self.memlockLimit(), root: geteuid() == 0)
        }

        /// The limits for a process with `memlock` (RLIMIT_MEMLOCK, nil when unlimited) that is or
        /// is not root: root may pin beyond RLIMIT_MEMLOCK (CAP_IPC_LOCK), anyone else not.
        init(_ options: Options, device: (maxRegionBytes: UInt64, maxRegions: Int), memlock: UInt64?, root: Bool) {
            maxRegions = max(1, options.maxRegions ?? min(1_000_000, max(1, device.maxRegions / 2)))
            if let bytes = options.maxPinnedBytes {
                maxPinnedBytes = max(1, bytes)
                pinnedBytesBound = .option
            } else {
                let bounded = root ? Int.max : memlock.map { Int(clamping: $0 / 4 * 3) } ?? Int.max
                let deviceBound = Int(clamping: device.maxRegionBytes)
                maxPinnedBytes = max(1, min(bounded, deviceBound))
                pinnedBytesBound = if let memlock, bounded < deviceBound { .memlock(softLimit: memlock) } else { .device }
            }
        }

        /// RLIMIT_MEMLOCK's soft limit, nil when unlimited or unknown.
        static func memlockLimit() -> UInt64? {
            var limit = rlimit()
            guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max
            else { return nil }
            return UInt64(limit.rlim_cur)
        }
    }
}
