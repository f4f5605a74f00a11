// What vma_classifier.c shares with vma_query.c: reading /proc/self/maps. Not part of the
// module's interface (include/ holds that).
#pragma once
#include "memory_hooks.h"

/// open("/proc/self/maps", O_RDONLY | O_CLOEXEC).
__attribute__((visibility("hidden"))) int cmemhooks_open_maps(void);

/// Parses one line of /proc/self/maps, "start-end perms offset major:minor inode   name", from
/// [p, end): 0, or -1 when it is not such a line.
__attribute__((visibility("hidden"))) int cmemhooks_parse_maps_line(const char *p, const char *end, cmemhooks_vma *out);
