#if canImport(Glibc)
import Glibc
#endif

/// A system call of the check's own that failed (sbrk, shmget, memfd_create, ...): which call,
/// on what, and errno with its text, worded like `VerbsError` so every failure reads the same.
struct SystemCallError: Error, Equatable, CustomStringConvertible {
    var call: String
    var argument: String
    var errnoValue: Int32

    /// Captures the calling thread's errno now: call it right after the failing call.
    init(_ call: String, _ argument: String, errno value: Int32 = errno) {
        self.call = call
        self.argument = argument
        errnoValue = value
    }

    var description: String { "\(call)(\(argument)): \(String(cString: strerror(errnoValue))) (errno \(errnoValue))" }
}

/// Why a change could not be made in this process (not a failure of the cache): the row says so.
struct ChangeSkipped: Error, Equatable {
    var reason: String
    /// True when another attempt may succeed (malloc moved the break once; it rarely does twice).
    var retryable = false
}
