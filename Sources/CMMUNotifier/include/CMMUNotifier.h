// The C the notifier engine (MMUNotifier) needs, and nothing else does: its SRCU read side,
// the address space's window sequence and the callback depth.
//
// Why C: each is state a hot path must reach in one or two instructions with no call: a
// `static inline` function over a `_Thread_local` is inlined into Swift at -O (Swift has no
// thread-local storage of its own), and an atomic whose address C code may read (a Swift
// `Atomic` has none). Each header says what its piece is for; symbols are prefixed srcu_ or cmmu_.
#pragma once
#include "srcu_counters.h"
#include "window_sequence.h"
#include "callback_depth.h"
