import NotifierEngine
import Monitors
import Verbs

/// Why the cache refused a request. Each case names what was wrong; device failures carry the
/// `VerbsError` (call, argument, errno) underneath.
public enum RegistrationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The error for a device refusal of `[address, address + length)` with `access`: the typed
    /// read-only case where the kernel refused write access to read-only memory. A registrar's
    /// error that is not a `VerbsError` is carried as one of `ibv_reg_mr`.
    static func device(_ error: any Error, address: UInt, length: Int, access: AccessFlags) -> RegistrationError {
        let verbs = error as? VerbsError ?? VerbsError(call: "ibv_reg_mr", detail: "\(error)")
        return verbs.isWriteToReadOnlyMemory ? .readOnlyMemory(address: address, length: length, access: access) : .device(verbs)
    }

    /// `register(address:length:)` got an unusable range.
    case invalidRange(call: String, address: UInt, length: Int, reason: String)
    /// The device refused the registration (`ibv_reg_mr`), even after evicting idle ones.
    case device(VerbsError)
    /// Write access (`access`) was asked for memory the process maps read-only (after an
    /// `mprotect`, say): register it with read access only, or make it writable first.
    case readOnlyMemory(address: UInt, length: Int, access: AccessFlags)
    /// The memory kept changing under every attempt: `attempts` registrations raced an
    /// invalidation and were thrown away.
    case keptChanging(address: UInt, length: Int, attempts: Int)
    /// The cache is at `maxRegions` or `maxPinnedBytes` and every cached region is held (or
    /// waiting for a teardown that did not finish in time): nothing can be evicted for
    /// `requested` more bytes. Release registrations, or raise the limits.
    case limitReached(regions: Int, maxRegions: Int, pinnedBytes: Int, maxPinnedBytes: Int, requested: Int)
    /// The cache was shut down (or its device failed) before this call.
    case shutDown(reason: String)
    /// `call` was made from inside an invalidation callback and would have waited for an
    /// invalidation in flight, possibly the callback's own: it would never return. Register from
    /// elsewhere (the callback can hand the work to another thread).
    case wouldDeadlock(call: String, reason: String)
    /// `call` was made in a `fork()` child of the process that made the cache. The cache, its
    /// monitor and its device registrations are the parent's (verbs objects do not survive a
    /// fork either): nothing would invalidate for the child. Use the cache in the parent, or
    /// exec.
    case forkedChild(call: String)

    public var description: String {
        switch self {
        case let .invalidRange(call, address, length, reason):
            "\(call)(address: 0x\(String(address, radix: 16)), length: \(length)): \(reason)"
        case let .device(error):
            "\(error)"
        case let .readOnlyMemory(address, length, access):
            "register(address: 0x\(String(address, radix: 16)), length: \(length), access: \(access)): the memory is mapped read-only; ask for read access only"
        case let .keptChanging(address, length, attempts):
            "register(address: 0x\(String(address, radix: 16)), length: \(length)): the memory changed during each of \(attempts) attempts"
        case let .limitReached(regions, maxRegions, pinnedBytes, maxPinnedBytes, requested):
            "register(\(requested) bytes): the cache holds \(regions) of at most \(maxRegions) regions and \(pinnedBytes) of at most \(maxPinnedBytes) pinned bytes, and every cached region is in use"
        case let .shutDown(reason):
            "the registration cache is shut down: \(reason)"
        case let .forkedChild(call):
            "\(call)() in a fork() child: the registration cache, its monitor and its device registrations belong to the parent process; use them there, or exec"
        case let .wouldDeadlock(call, reason):
            "\(call)() inside an invalidation callback would wait for itself: \(reason)"
        }
    }
}
