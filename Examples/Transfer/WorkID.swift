/// What a work request was, packed into its 64-bit id so one completion queue can carry the
/// data writes and both directions of control traffic.
enum WorkID: Equatable {
    /// The RDMA WRITE of message `index`.
    case write(UInt64)
    /// A receive posted from control buffer `buffer`.
    case receive(Int)
    /// A SEND from control buffer `buffer`.
    case send(Int)

    private static let tagShift: UInt64 = 56

    var raw: UInt64 {
        switch self {
        case .write(let index): 1 << Self.tagShift | index
        case .receive(let buffer): 2 << Self.tagShift | UInt64(buffer)
        case .send(let buffer): 3 << Self.tagShift | UInt64(buffer)
        }
    }

    init?(raw: UInt64) {
        let value = raw & (1 << Self.tagShift - 1)
        switch raw >> Self.tagShift {
        case 1: self = .write(value)
        case 2: self = .receive(Int(value))
        case 3: self = .send(Int(value))
        default: return nil
        }
    }
}
