import Testing
@testable import NotifierEngine

@Suite("Speculative reference count")
struct SpeculativeRefCountTests {
    @Test func getUnlessZeroTakesAReferenceOnlyWhenLive() throws {
        let refs = SpeculativeRefCount(1)
        let check1 = refs.getUnlessZero()
        #expect(check1)
        let check2 = refs.value == 2
        #expect(check2)
        let check3 = try refs.put() == false
        #expect(check3)
        let check4 = try refs.put() == true
        #expect(check4)
        let check5 = refs.value == 0
        #expect(check5)
        let check6 = !refs.getUnlessZero()
        #expect(check6)
        let check7 = refs.value == 0
        #expect(check7)
    }

    @Test func freezeOnlyFromTheExpectedCount() throws {
        let refs = SpeculativeRefCount(2)
        let check8 = !refs.freeze(expected: 1)
        #expect(check8)
        let check9 = refs.value == 2
        #expect(check9)
        _ = try refs.put()
        let check10 = refs.freeze(expected: 1)
        #expect(check10)
        let check11 = refs.value == 0
        #expect(check11)
        let check12 = !refs.getUnlessZero()
        #expect(check12, "a frozen count must not be resurrected")
        try refs.unfreeze(1)
        let check13 = refs.getUnlessZero()
        #expect(check13)
        let check14 = refs.value == 2
        #expect(check14)
    }

    @Test func misuseIsATypedError() throws {
        let refs = SpeculativeRefCount(0)
        #expect(throws: NotifierError.self) { _ = try refs.put() }
        #expect(throws: NotifierError.self) { try refs.get() }
        let check15 = refs.value == 0
        #expect(check15)
        #expect(throws: NotifierError.self) { try refs.unfreeze(0) }
        try refs.unfreeze(3)
        #expect(throws: NotifierError.self) { try refs.unfreeze(1) }  // not frozen
        let check16 = !refs.freeze(expected: 0)
        #expect(check16)
        try refs.get()
        let check17 = refs.value == 4
        #expect(check17)
    }
}
