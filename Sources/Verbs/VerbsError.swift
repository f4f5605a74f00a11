import SystemPackage

/// The one error every verbs call in this module throws.
///
/// It names the call that failed, the argument that was wrong (when one was), and the errno the
/// kernel or provider returned, so a log line alone tells what to fix:
/// `ibv_reg_mr(length: 0): Invalid argument (EINVAL)`.
public struct VerbsError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The C call that failed, e.g. `ibv_reg_mr`.
    public var call: String
    /// The argument at fault, with its value where that helps (`length: 0`), or nil.
    public var argument: String?
    /// The errno the call reported, if it reported one.
    public var errno: Errno?
    /// Extra words for failures errno cannot express (a timeout, a work completion status).
    public var detail: String?
    /// True when the call was refused because write access was asked for memory the process
    /// maps read-only (`ibv_reg_mr` says only EFAULT; the module looked at the mapping).
    public var isWriteToReadOnlyMemory = false

    public init(call: String, argument: String? = nil, errno: Errno? = nil, detail: String? = nil) {
        self.call = call
        self.argument = argument
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var text = call
        if let argument { text += "(\(argument))" }
        var reasons: [String] = []
        if let errno { reasons.append("\(errno.description) (\(Self.symbol(errno)))") }
        if let detail { reasons.append(detail) }
        if !reasons.isEmpty { text += ": " + reasons.joined(separator: "; ") }
        return text
    }

    /// The errno's symbolic name, which is what people search for.
    private static func symbol(_ errno: Errno) -> String {
        switch errno {
        case .invalidArgument: "EINVAL"
        case .badAddress: "EFAULT"
        case .noMemory: "ENOMEM"
        case .resourceTemporarilyUnavailable: "EAGAIN"
        case .permissionDenied: "EACCES"
        case .notPermitted: "EPERM"
        case .noSuchFileOrDirectory: "ENOENT"
        case .operationNotSupportedByDevice: "ENODEV"
        case .resourceBusy: "EBUSY"
        case .timedOut: "ETIMEDOUT"
        case .notSupported: "EOPNOTSUPP"
        case .connectionRefused: "ECONNREFUSED"
        case .badFileDescriptor: "EBADF"
        case .noFunction: "ENOSYS"
        default: "errno \(errno.rawValue)"
        }
    }
}

extension VerbsError {
    /// For calls that return -1 (or NULL) and leave the reason in the thread's errno.
    static func fromErrno(_ call: String, argument: String? = nil) -> VerbsError {
        VerbsError(call: call, argument: argument, errno: Errno(rawValue: currentErrno()))
    }

    /// For verbs that return the errno value itself (most `ibv_*` calls: 0 or an errno).
    static func fromReturn(_ call: String, _ code: Int32, argument: String? = nil) -> VerbsError {
        // Some providers return -errno or -1 with errno set; normalise all three.
        let value = code == -1 ? currentErrno() : abs(code)
        return VerbsError(call: call, argument: argument, errno: Errno(rawValue: value))
    }
}
