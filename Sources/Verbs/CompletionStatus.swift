import CVerbs

/// How a work request ended (`enum ibv_wc_status`), named as in verbs.
public enum CompletionStatus: Sendable, Hashable, CustomStringConvertible {
    case success
    case localLengthError
    case localQPOperationError
    case localEEContextOperationError
    case localProtectionError
    case workRequestFlushError
    case memoryWindowBindError
    case badResponseError
    case localAccessError
    case remoteInvalidRequestError
    case remoteAccessError
    case remoteOperationError
    case retryExceededError
    case rnrRetryExceededError
    case localRDDViolationError
    case remoteInvalidRDRequest
    case remoteAbortError
    case invalidEECNError
    case invalidEEContextStateError
    case fatalError
    case responseTimeoutError
    case generalError
    case tagMatchingError
    case tagMatchingRendezvousIncomplete
    /// A status this library does not know (a newer rdma-core).
    case unknown(UInt32)

    init(_ raw: ibv_wc_status) {
        let known: [ibv_wc_status: CompletionStatus] = [
            IBV_WC_SUCCESS: .success, IBV_WC_LOC_LEN_ERR: .localLengthError,
            IBV_WC_LOC_QP_OP_ERR: .localQPOperationError, IBV_WC_LOC_EEC_OP_ERR: .localEEContextOperationError,
            IBV_WC_LOC_PROT_ERR: .localProtectionError, IBV_WC_WR_FLUSH_ERR: .workRequestFlushError,
            IBV_WC_MW_BIND_ERR: .memoryWindowBindError, IBV_WC_BAD_RESP_ERR: .badResponseError,
            IBV_WC_LOC_ACCESS_ERR: .localAccessError, IBV_WC_REM_INV_REQ_ERR: .remoteInvalidRequestError,
            IBV_WC_REM_ACCESS_ERR: .remoteAccessError, IBV_WC_REM_OP_ERR: .remoteOperationError,
            IBV_WC_RETRY_EXC_ERR: .retryExceededError, IBV_WC_RNR_RETRY_EXC_ERR: .rnrRetryExceededError,
            IBV_WC_LOC_RDD_VIOL_ERR: .localRDDViolationError, IBV_WC_REM_INV_RD_REQ_ERR: .remoteInvalidRDRequest,
            IBV_WC_REM_ABORT_ERR: .remoteAbortError, IBV_WC_INV_EECN_ERR: .invalidEECNError,
            IBV_WC_INV_EEC_STATE_ERR: .invalidEEContextStateError, IBV_WC_FATAL_ERR: .fatalError,
            IBV_WC_RESP_TIMEOUT_ERR: .responseTimeoutError, IBV_WC_GENERAL_ERR: .generalError,
            IBV_WC_TM_ERR: .tagMatchingError, IBV_WC_TM_RNDV_INCOMPLETE: .tagMatchingRendezvousIncomplete,
        ]
        self = known[raw] ?? .unknown(raw.rawValue)
    }

    /// The `IBV_WC_*` name, e.g. `IBV_WC_RETRY_EXC_ERR`.
    public var verbsName: String {
        switch self {
        case .success: "IBV_WC_SUCCESS"
        case .localLengthError: "IBV_WC_LOC_LEN_ERR"
        case .localQPOperationError: "IBV_WC_LOC_QP_OP_ERR"
        case .localEEContextOperationError: "IBV_WC_LOC_EEC_OP_ERR"
        case .localProtectionError: "IBV_WC_LOC_PROT_ERR"
        case .workRequestFlushError: "IBV_WC_WR_FLUSH_ERR"
        case .memoryWindowBindError: "IBV_WC_MW_BIND_ERR"
        case .badResponseError: "IBV_WC_BAD_RESP_ERR"
        case .localAccessError: "IBV_WC_LOC_ACCESS_ERR"
        case .remoteInvalidRequestError: "IBV_WC_REM_INV_REQ_ERR"
        case .remoteAccessError: "IBV_WC_REM_ACCESS_ERR"
        case .remoteOperationError: "IBV_WC_REM_OP_ERR"
        case .retryExceededError: "IBV_WC_RETRY_EXC_ERR"
        case .rnrRetryExceededError: "IBV_WC_RNR_RETRY_EXC_ERR"
        case .localRDDViolationError: "IBV_WC_LOC_RDD_VIOL_ERR"
        case .remoteInvalidRDRequest: "IBV_WC_REM_INV_RD_REQ_ERR"
        case .remoteAbortError: "IBV_WC_REM_ABORT_ERR"
        case .invalidEECNError: "IBV_WC_INV_EECN_ERR"
        case .invalidEEContextStateError: "IBV_WC_INV_EEC_STATE_ERR"
        case .fatalError: "IBV_WC_FATAL_ERR"
        case .responseTimeoutError: "IBV_WC_RESP_TIMEOUT_ERR"
        case .generalError: "IBV_WC_GENERAL_ERR"
        case .tagMatchingError: "IBV_WC_TM_ERR"
        case .tagMatchingRendezvousIncomplete: "IBV_WC_TM_RNDV_INCOMPLETE"
        case .unknown(let value): "ibv_wc_status(\(value))"
        }
    }

    public var description: String { verbsName }
}

/// One finished work request (`struct ibv_wc`).
public struct WorkCompletion: Sendable, Hashable {
    /// The id the request was posted with.
    public var id: UInt64
    public var status: CompletionStatus
    public var opcode: ibv_wc_opcode
    /// Bytes received (receives, RDMA READ responses are not reported here by verbs).
    public var byteLength: UInt32
    public var queuePairNumber: UInt32
    public var vendorError: UInt32
    /// The sender's immediate value (SEND or RDMA WRITE with immediate), nil when it sent none.
    public var immediateData: UInt32?

    init(_ raw: ibv_wc) {
        id = raw.wr_id
        status = CompletionStatus(raw.status)
        opcode = raw.opcode
        byteLength = raw.byte_len
        queuePairNumber = raw.qp_num
        vendorError = raw.vendor_err
        immediateData = raw.wc_flags & IBV_WC_WITH_IMM.rawValue != 0 ? UInt32(bigEndian: raw.imm_data) : nil
    }
}
