import Testing
import Verbs

/// What can be checked of device handling on a host without RDMA (and with it).
@Suite struct DeviceListTests {
    @Test func listingDevicesNeverFails() throws {
        let devices = try DeviceContext.devices()
        #expect(devices.allSatisfy { !$0.name.isEmpty })
    }

    @Test func openingAMissingDeviceNamesItAndTheDevicesPresent() throws {
        let error = try #require(throws: VerbsError.self) { try DeviceContext(name: "no_such_device") }
        #expect(error.call == "ibv_open_device")
        #expect(error.argument == "name: \"no_such_device\"")
        #expect(error.errno == .operationNotSupportedByDevice)
        let present = try DeviceContext.devices()
        if present.isEmpty {
            #expect(error.detail == "this host has no RDMA device")
        } else {
            #expect(present.allSatisfy { error.detail?.contains($0.name) == true })
        }
    }
}
