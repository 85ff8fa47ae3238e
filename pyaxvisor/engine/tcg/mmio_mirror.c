/* The read callback of mirrored device windows: see mmio_mirror.h. */
#include "mmio_mirror.h"

uint64_t mirror_read(void *uc, uint64_t offset, unsigned size, void *user_data)
{
    struct mmio_mirror *m = user_data;
    unsigned lane = (unsigned)(offset & 3);
    if (size <= 4 && lane + size <= 4 && offset < m->size) {
        uint64_t word = offset >> 2;
        uint32_t need = ((1u << size) - 1u) << lane;
        uint32_t valid = __atomic_load_n(&m->valid[word], __ATOMIC_ACQUIRE);
        if ((valid & need) == need && (size == 4 || !(valid & MIRROR_WHOLE_WORD))) {
            uint32_t value = __atomic_load_n(&m->data[word], __ATOMIC_RELAXED) >> (8 * lane);
            m->served++;
            return size == 4 ? value : value & ((1u << (8 * size)) - 1u);
        }
    }
    return m->read(uc, offset, size, m->read_ud);
}
