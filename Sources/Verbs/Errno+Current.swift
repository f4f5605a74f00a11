#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The calling thread's errno, read right after a failed C call.
@inline(__always)
func currentErrno() -> Int32 { errno }

/// Sets errno to 0 before a call that may fail without setting it (some verbs return NULL
/// with errno untouched), so a stale value is never reported.
@inline(__always)
func clearErrno() { errno = 0 }
