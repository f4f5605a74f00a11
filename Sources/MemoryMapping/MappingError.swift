#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// A failed memory-mapping system call: which call, on what, and the errno with its text.
public struct MappingError: Error, Equatable, Sendable, CustomStringConvertible {
    public var call: String
    public var argument: String
    public var errno: Errno

    public init(call: String, argument: String, errno: Errno) {
        self.call = call
        self.argument = argument
        self.errno = errno
    }

    /// The error of `call`, which just failed, with the calling thread's errno (read it before
    /// anything else can change it).
    public static func fromErrno(_ call: String, argument: String) -> MappingError {
        MappingError(call: call, argument: argument, errno: Errno(rawValue: Glibc.errno))
    }

    public var description: String { "\(call)(\(argument)): \(errno)" }
}
