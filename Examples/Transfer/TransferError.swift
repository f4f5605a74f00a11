/// A transfer that cannot go on, in words a user can act on (which step, which peer, why).
struct TransferError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
