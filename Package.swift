// swift-tools-version: 6.1
// RDMAMemory: a device-driver style memory registration layer for RDMA applications.
// One module per layer (see DESIGN.md): a lower module never imports a higher one.
import PackageDescription

let package = Package(
    name: "RDMAMemory",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RDMAMemory", targets: ["RDMAMemory"]),
        .library(name: "Verbs", targets: ["Verbs"]),
        .library(name: "MMUNotifier", targets: ["MMUNotifier"]),
        // What a C program loads (or LD_PRELOADs) to make RDMAMemory libfabric's memory monitor.
        .library(name: "RDMAMemoryLibfabric", type: .dynamic, targets: ["RDMAMemoryLibfabric"]),
        .executable(name: "stale-registration", targets: ["StaleRegistration"]),
        // The two-host example: a data set over rdma_cm, every byte verified, cache against plain.
        .executable(name: "rdma-transfer", targets: ["Transfer"]),
        // `rdmamemory info`: devices, ODP, how invalidations reach this process, limits.
        .executable(name: "rdmamemory", targets: ["RDMAMemoryTool"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // libibverbs + librdmacm as a system library (Debian: libibverbs-dev, librdmacm-dev).
        .systemLibrary(
            name: "CVerbs",
            path: "CVerbs",
            pkgConfig: "libibverbs",
            providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]
        ),
        // Only what Swift cannot call: syscall(), ioctl request macros, compat-ABI verbs.
        .target(name: "CShims"),
        .target(
            name: "Verbs",
            dependencies: [
                "CVerbs",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(name: "MMUNotifier", dependencies: ["CShims"]),
        // The process's munmap, mprotect, shmat, shmdt: a memory monitor sees them in the calling thread.
        .target(name: "CMemoryHooks"),
        // Anonymous mappings that tests, examples and benchmarks unmap and remap on purpose.
        .target(
            name: "MemoryMapping",
            dependencies: ["CShims", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .target(name: "MemoryMonitor", dependencies: ["MMUNotifier", "CShims", "CMemoryHooks", .product(name: "SystemPackage", package: "swift-system")]),
        .target(
            name: "MemoryRegistration",
            dependencies: ["MMUNotifier", "MemoryMonitor", "Verbs", "CShims", .product(name: "Metrics", package: "swift-metrics")]
        ),
        // libfabric's fid_mem_monitor, its import and the preload constructor (Debian: libfabric-dev).
        .target(name: "CLibfabricMonitor", dependencies: ["CMemoryHooks"], linkerSettings: [.linkedLibrary("fabric")]),
        .target(name: "RDMAMemoryLibfabric", dependencies: ["CLibfabricMonitor", "MMUNotifier", "MemoryMonitor"]),
        .target(name: "RDMAMemory", dependencies: ["Verbs", "MMUNotifier", "MemoryMonitor", "MemoryRegistration"]),

        .executableTarget(
            name: "StaleRegistration",
            dependencies: ["RDMAMemory", "MemoryMapping"],
            path: "Examples/StaleRegistration"
        ),
        // zlib's CRC-32 for the transfer example (Debian: zlib1g-dev).
        .systemLibrary(name: "CZlib", path: "Examples/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .executableTarget(
            name: "Transfer",
            dependencies: [
                "Verbs", "MemoryRegistration", "MemoryMapping", "CZlib",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/Transfer"
        ),
        .executableTarget(
            name: "RDMAMemoryTool",
            dependencies: [
                "Verbs", "MemoryMonitor", "MemoryRegistration", "MemoryMapping", "CShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "EngineBenchmark", dependencies: ["MMUNotifier", "BenchmarkSupport"], path: "Benchmarks/EngineBenchmark"
        ),
        .executableTarget(
            name: "MonitorBenchmark", dependencies: ["MemoryMonitor", "MemoryMapping", "BenchmarkSupport", "CShims"],
            path: "Benchmarks/MonitorBenchmark"
        ),

        // What every benchmark executable shares: threads, clocks, medians.
        .target(name: "BenchmarkSupport", path: "Benchmarks/BenchmarkSupport"),
        .executableTarget(
            name: "CacheBenchmark",
            dependencies: [
                "MemoryRegistration", "MemoryMonitor", "MemoryMapping", "BenchmarkSupport", "Verbs", "CShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/CacheBenchmark"
        ),

        .testTarget(name: "VerbsTests", dependencies: ["Verbs", "MemoryMapping"]),
        // What more than one test target needs (a seeded generator), in no product.
        .target(name: "SharedTestSupport", path: "Tests/SharedTestSupport"),
        .testTarget(name: "MMUNotifierTests", dependencies: ["MMUNotifier", "SharedTestSupport"]),
        .testTarget(
            name: "MemoryRegistrationTests",
            dependencies: [
                "MemoryRegistration", "MemoryMapping", "CShims", "SharedTestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(name: "MemoryMonitorTests", dependencies: ["MemoryMonitor", "MemoryMapping", "SharedTestSupport"]),
        .testTarget(name: "LibfabricMonitorTests", dependencies: ["RDMAMemoryLibfabric", "MMUNotifier", "MemoryMonitor"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Verbs", "MemoryMapping", "MemoryRegistration", "CShims", "SharedTestSupport"]),
        .testTarget(name: "RDMAMemoryToolTests", dependencies: ["RDMAMemoryTool", "Verbs"]),
        .testTarget(name: "TransferTests", dependencies: ["Transfer"]),
    ],
    swiftLanguageModes: [.v6]
)
