import CVerbs
import SystemPackage
import Testing
@testable import Verbs

@Suite struct VerbsErrorTests {
    @Test func describesCallArgumentAndErrno() {
        let error = VerbsError(call: "ibv_reg_mr", argument: "length: 0", errno: .invalidArgument)
        #expect(error.description == "ibv_reg_mr(length: 0): Invalid argument (EINVAL)")
    }

    @Test func describesDetailWithoutErrno() {
        let error = VerbsError(call: "ibv_poll_cq", detail: "work request completed with IBV_WC_RETRY_EXC_ERR")
        #expect(error.description == "ibv_poll_cq: work request completed with IBV_WC_RETRY_EXC_ERR")
    }

    @Test("return codes in all three verbs conventions name the same errno", arguments: [Int32(14), -14])
    func normalisesReturnCodes(code: Int32) {
        #expect(VerbsError.fromReturn("ibv_modify_qp", code).errno == .badAddress)
    }
}

@Suite struct AccessFlagsTests {
    @Test func namesFlags() {
        #expect(AccessFlags.rdma.description == "[localWrite, remoteWrite, remoteRead]")
        #expect(AccessFlags().description == "[]")
    }

    @Test func knowsWhichAccessNeedsWritableMemory() {
        #expect(AccessFlags.localWrite.needsWritableMemory)
        #expect(AccessFlags.remoteWrite.needsWritableMemory)
        #expect(!AccessFlags.remoteRead.needsWritableMemory)
        #expect(!AccessFlags().needsWritableMemory)
    }
}

@Suite struct GIDTests {
    @Test func printsAsIPv6() throws {
        let gid = try #require(GID(bytes: [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFE, 0, 0, 1]))
        #expect(gid.description == "fe80::ff:fe00:1")
        #expect(!gid.isZero)
    }

    @Test func refusesWrongLength() {
        #expect(GID(bytes: [1, 2, 3]) == nil)
    }
}

@Suite struct CompletionStatusTests {
    @Test func mapsVerbsStatuses() {
        #expect(CompletionStatus(IBV_WC_SUCCESS) == .success)
        #expect(CompletionStatus(IBV_WC_RETRY_EXC_ERR) == .retryExceededError)
        #expect(CompletionStatus(IBV_WC_REM_ACCESS_ERR).description == "IBV_WC_REM_ACCESS_ERR")
        #expect(CompletionStatus(ibv_wc_status(rawValue: 999)) == .unknown(999))
    }
}
