// zlib (Debian: zlib1g-dev), for the transfer example's per-message CRC-32.
#include <zlib.h>
