// What users import: `import RDMAMemory` brings every layer they need.
@_exported import MMUNotifier
@_exported import Verbs
