import Foundation
import MMUNotifier
import Synchronization
import SharedTestSupport
import Testing
@testable import MemoryRegistration

@Suite("Region index") struct RegionIndexTests {
    let srcu = SRCUDomain()

    func record(_ start: UInt, _ length: UInt, access: UInt32 = 0b111, owner: UInt) -> RegionRecord {
        RegionRecord(start: start, end: start + length, access: access, lkey: UInt32(owner), rkey: UInt32(owner) + 1,
                     owner: owner)
    }

    func find(_ index: RegionIndex, _ start: UInt, _ length: UInt, access: UInt32 = 0b1) -> RegionRecord? {
        srcu.withReadLock { index.lookup(start: start, end: start + length, access: access) }
    }

    @Test func findsWhatCoversTheBufferOnly() {
        let index = RegionIndex(srcu: srcu)
        index.insert(record(0x10_0000, 0x4000, owner: 1))
        #expect(find(index, 0x10_0000, 0x4000)?.owner == 1)
        #expect(find(index, 0x10_1000, 0x100)?.owner == 1)       // inside
        #expect(find(index, 0x10_3000, 0x1000)?.owner == 1)      // ends at the end
        #expect(find(index, 0x10_3000, 0x1001) == nil)           // runs past the end
        #expect(find(index, 0x0F_F000, 0x2000) == nil)           // starts before
        #expect(find(index, 0x20_0000, 0x10) == nil)             // elsewhere
    }

    @Test func needsAtLeastTheAskedAccess() {
        let index = RegionIndex(srcu: srcu)
        index.insert(record(0x10_0000, 0x1000, access: 0b001, owner: 1))
        #expect(find(index, 0x10_0000, 0x1000, access: 0b001)?.owner == 1)
        #expect(find(index, 0x10_0000, 0x1000, access: 0b011) == nil)
        index.insert(record(0x10_0000, 0x1000, access: 0b011, owner: 2))
        #expect(find(index, 0x10_0000, 0x1000, access: 0b011)?.owner == 2)
    }

    @Test("a region spanning many granules is found from each of them")
    func spansGranules() {
        let index = RegionIndex(srcu: srcu, granuleShift: 16)
        index.insert(record(0x7_0000_8000, 1 << 20, owner: 9))   // 1 MiB, not granule aligned
        for offset in stride(from: UInt(0), to: 1 << 20, by: 0x8000) {
            #expect(find(index, 0x7_0000_8000 + offset, 0x100)?.owner == 9)
        }
        #expect(index.records(overlapping: 0x7_0008_0000, 0x7_0008_0001).map(\.owner) == [9])
        index.remove(owner: 9, start: 0x7_0000_8000, end: 0x7_0010_8000)
        #expect(find(index, 0x7_0008_0000, 0x100) == nil)
        #expect(index.count == 0)
    }

    @Test("the top of the address space and empty ranges")
    func edges() {
        let index = RegionIndex(srcu: srcu)
        let top = UInt.max - 0xFFF
        index.insert(record(top, 0xFFF, owner: 3))
        #expect(find(index, top, 0xFFF)?.owner == 3)
        index.insert(record(0x1000, 0, owner: 4))  // empty: not inserted
        #expect(index.count == 1)
        #expect(index.records(overlapping: 5, 5).isEmpty)
    }

    @Test("random inserts and removes agree with a plain list, through growth and tombstones")
    func agreesWithAModel() {
        let index = RegionIndex(srcu: srcu, granuleShift: 16, initialCapacity: 16)
        var model: [RegionRecord] = []
        var generator = SystemRandomNumberGenerator()
        let seed = UInt64.random(in: 0...UInt64.max, using: &generator)
        var random = SeededRandom(seed: seed)
        for owner in UInt(1)...4000 {
            if !model.isEmpty && random.next() % 3 == 0 {
                let victim = model.remove(at: Int(random.next() % UInt64(model.count)))
                index.remove(owner: victim.owner, start: victim.start, end: victim.end)
            } else {
                let start = UInt(random.next() % 4096) << 12
                let length = UInt(1 + random.next() % 64) << 12
                let added = record(start, length, access: UInt32(1 + random.next() % 7), owner: owner)
                model.append(added)
                index.insert(added)
            }
            if owner % 50 == 0 {
                for _ in 0..<20 {
                    let start = UInt(random.next() % 4200) << 12
                    let length = UInt(1 + random.next() % 8) << 10
                    let access = UInt32(1 + random.next() % 7)
                    let found = find(index, start, length, access: access)
                    let expected = model.contains { $0.covers(start: start, end: start + length, access: access) }
                    #expect((found != nil) == expected, "seed \(seed), lookup 0x\(String(start, radix: 16))+\(length)")
                    if let found { #expect(found.covers(start: start, end: start + length, access: access)) }
                }
            }
        }
        #expect(index.count == model.count, "seed \(seed)")
    }

    @Test("10^5 small registrations: every one is found")
    func hundredThousand() {
        let index = RegionIndex(srcu: srcu)
        let count = 100_000
        for owner in 0..<count { index.insert(record(0x1000_0000 + UInt(owner) * 0x2000, 0x1000, owner: UInt(owner) + 1)) }
        let missing = srcu.withReadLock {
            (0..<count).filter { index.lookup(start: 0x1000_0000 + UInt($0) * 0x2000 + 8, end: 0x1000_0000 + UInt($0) * 0x2000 + 16, access: 1)?.owner != UInt($0) + 1 }
        }
        #expect(missing.isEmpty)
    }
}
