/*
 * Scatter/gather transfers between a file and guest RAM, for the virtio block device.
 *
 * transfer(fd, offset, ram, ram_base, addrs, lengths, write, nowait) moves the bytes
 * of the guest pieces addrs[i], lengths[i] (guest-physical, in order) from the file at
 * `offset` into guest RAM (write false: preadv2) or from guest RAM to the file (write
 * true: pwritev2). `ram` is a buffer over the one guest RAM range that starts at
 * guest-physical `ram_base` (writable for reads). Every piece is checked to lie inside
 * it before any I/O (ValueError otherwise: the caller then takes its general path).
 *
 * The whole transfer is done or an exception raised: short transfers continue where
 * they stopped, EINTR is retried, a read that finds the end of the file raises
 * OSError(EIO). `nowait` (reads only): RWF_NOWAIT, so the call never waits for the
 * disk; when part of the data is not in the host's page cache it raises
 * BlockingIOError (the buffers may be part filled; do it again without nowait).
 * Errors of the system calls raise OSError with their errno (EOPNOTSUPP/EINVAL for a
 * file system that refuses RWF_NOWAIT).
 *
 * The GIL is released during the system calls; `ram` stays held (its buffer export
 * keeps the memory alive). Pieces are passed IOV_BATCH at a time.
 *
 * serve(...) is virtio-blk's fast path: it takes the requests of the shape Linux's
 * driver makes (below) straight from a split queue in guest RAM, carries them out and
 * completes them, all in native code with the GIL released; the Python device
 * (blk.py) serves everything else, and gives the precise error of a chain that breaks
 * a rule. A request of the fast shape, in the available ring at `next_avail`:
 *
 *   - its head descriptor has exactly VIRTQ_DESC_F_INDIRECT, a table of 3..IOV_BATCH+2
 *     entries (len a multiple of 16) inside RAM;
 *   - the table's entries in order (entry i's next is i + 1, NEXT on all but the last),
 *     no flag but NEXT and WRITE: entry 0 the 16-byte header (device-readable), then
 *     the data, all device-readable for VIRTIO_BLK_T_OUT or all device-writable for
 *     VIRTIO_BLK_T_IN, no empty piece, then the 1-byte status (device-writable); every
 *     buffer inside RAM. Each descriptor is read once (the guest may change it).
 *
 * It stops at the first available chain of any other shape (STOP_OTHER) without
 * taking it, at an empty ring (STOP_EMPTY, having published avail_event with
 * VIRTIO_F_EVENT_IDX as the Python queue does), at a read that would wait for the
 * disk with `nowait` (STOP_WAIT, the chain not taken; EOPNOTSUPP/EINVAL of
 * RWF_NOWAIT too, so that the Python path finds out; with `nowait` every write stops
 * there, as writes may wait), and before a request with more
 * than `coalesce` bytes of buffers or the `max_requests`th (STOP_LIMIT) once it has
 * completed one: completions wait only for small requests (blk.py's _Completions).
 * Outcomes are those of blk.py: data length a multiple of 512, at most `max_bytes`,
 * inside `capacity` bytes, OUT on a read-only image, or a host error: VIRTIO_BLK_S_IOERR
 * with used length 1; otherwise OK with used length data + 1 (IN) or 1 (OUT). Used
 * elements are written as each request completes and the used index once at the end
 * (after a release fence), then used_event (or the flags) decides the interrupt.
 * Returns (next_avail, next_used, served, interrupt, stop, addrs, lengths): the
 * pieces of IN requests whose data reached guest RAM, which `written(addrs, lengths)`
 * (a Python callable, or None) hears before the used index is written, so that the CPUs
 * drop stale code before the driver can see the data. An exception it raises is the
 * eighth element (else None), not raised: the requests are done and the indices must
 * be kept; the caller raises it then.
 * The caller holds the queue's lock and passes its indices; the ring's three areas must
 * lie inside RAM (else STOP_OTHER: the Python path reports the error).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define IOV_BATCH 1024

enum { MOVE_OK = 0, MOVE_SHORT = -1, MOVE_WOULD_WAIT = -2 };

/* Move the `used` pieces of `iov` (modified) from or to the file at `offset`, IOV_BATCH
 * at a time: MOVE_OK, MOVE_SHORT (end of file / no progress), MOVE_WOULD_WAIT (nowait
 * read short), or an errno (> 0). `*done` counts the bytes moved. No Python calls:
 * runs with the GIL released. */
static int move(int fd, struct iovec *iov, Py_ssize_t used, long long offset, int write,
                int nowait, unsigned long long *done)
{
    Py_ssize_t first = 0;
    *done = 0;
    while (first < used) {
        int count = (int)(used - first < IOV_BATCH ? used - first : IOV_BATCH);
        size_t want = 0;
        for (int k = 0; k < count; k++)
            want += iov[first + k].iov_len;
        ssize_t got = write ? pwritev2(fd, iov + first, count, offset, 0)
                            : preadv2(fd, iov + first, count, offset, nowait ? RWF_NOWAIT : 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (got == 0)
            return MOVE_SHORT;
        if (nowait && !write && (size_t)got < want)
            return MOVE_WOULD_WAIT;
        *done += (unsigned long long)got;
        offset += got;
        /* step over what was transferred; a piece done in part continues at its rest */
        size_t left = (size_t)got;
        while (first < used && left >= iov[first].iov_len) {
            left -= iov[first].iov_len;
            first++;
        }
        if (left) {
            iov[first].iov_base = (char *)iov[first].iov_base + left;
            iov[first].iov_len -= left;
        }
    }
    return MOVE_OK;
}

static int piece(PyObject *seq, Py_ssize_t i, unsigned long long *out)
{
    PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
    *out = PyLong_AsUnsignedLongLong(item);
    return (*out == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *transfer(PyObject *self, PyObject *args)
{
    int fd, write, nowait;
    long long offset;
    unsigned long long ram_base;
    Py_buffer ram;
    PyObject *addrs_obj, *lengths_obj;
    (void)self;
    if (!PyArg_ParseTuple(args, "iLs*KOOpp", &fd, &offset, &ram, &ram_base, &addrs_obj,
                          &lengths_obj, &write, &nowait))
        return NULL;
    PyObject *result = NULL;
    PyObject *addrs = PySequence_Fast(addrs_obj, "addrs must be a sequence");
    PyObject *lengths = addrs ? PySequence_Fast(lengths_obj, "lengths must be a sequence") : NULL;
    struct iovec *iov = NULL;
    if (lengths == NULL)
        goto out;
    if (!write && ram.readonly) {
        PyErr_SetString(PyExc_TypeError, "reads need a writable RAM buffer");
        goto out;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(addrs);
    if (PySequence_Fast_GET_SIZE(lengths) != n) {
        PyErr_SetString(PyExc_ValueError, "addrs and lengths differ in length");
        goto out;
    }
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative file offset");
        goto out;
    }
    iov = PyMem_Malloc(sizeof(struct iovec) * (size_t)(n ? n : 1));
    if (iov == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    unsigned long long size = (unsigned long long)ram.len, total = 0;
    Py_ssize_t used = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a, len;
        if (piece(addrs, i, &a) < 0 || piece(lengths, i, &len) < 0)
            goto out;
        if (a < ram_base || a - ram_base > size || len > size - (a - ram_base)) {
            PyErr_Format(PyExc_ValueError, "piece %zd (%#llx, %llu bytes) is outside the RAM "
                         "range at %#llx", i, a, len, ram_base);
            goto out;
        }
        if (len == 0)
            continue;
        iov[used].iov_base = (char *)ram.buf + (a - ram_base);
        iov[used].iov_len = (size_t)len;
        used++;
        total += len;
    }
    unsigned long long done = 0;
    int outcome;
    Py_BEGIN_ALLOW_THREADS
    outcome = move(fd, iov, used, offset, write, nowait, &done);
    Py_END_ALLOW_THREADS
    offset += (long long)done;
    if (outcome > 0) {
        errno = outcome;
        PyErr_SetFromErrno(outcome == EAGAIN ? PyExc_BlockingIOError : PyExc_OSError);
    } else if (outcome == MOVE_WOULD_WAIT) {
        PyErr_SetString(PyExc_BlockingIOError, "the rest would wait for the disk");
    } else if (outcome == MOVE_SHORT) {
        PyErr_Format(PyExc_OSError, "%s at file offset %lld after %llu of %llu bytes",
                     write ? "no progress writing" : "end of file", offset, done, total);
    } else {
        result = PyLong_FromUnsignedLongLong(done);
    }
out:
    PyMem_Free(iov);
    Py_XDECREF(lengths);
    Py_XDECREF(addrs);
    PyBuffer_Release(&ram);
    return result;
}

/* ------------------------------------------------------------------ the fast path */

enum { STOP_EMPTY = 0, STOP_OTHER = 1, STOP_WAIT = 2, STOP_LIMIT = 3 };

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u
#define DESC_F_INDIRECT 4u
#define AVAIL_F_NO_INTERRUPT 1u
#define T_IN 0u
#define T_OUT 1u
#define S_OK 0
#define S_IOERR 1
#define SECTOR 512ull
#define FRAMING 17ull           /* a request's bytes besides its data: header, status */

struct ring {
    uint8_t *ram;
    unsigned long long base, len;   /* the RAM range: guest-physical base, bytes */
    unsigned long long desc, avail, used;
    unsigned size;
};

static inline int in_ram(const struct ring *r, unsigned long long a, unsigned long long n)
{
    return a >= r->base && a - r->base <= r->len && n <= r->len - (a - r->base);
}

static inline uint8_t *at(const struct ring *r, unsigned long long a)
{
    return r->ram + (a - r->base);
}

static inline uint16_t ld16(const struct ring *r, unsigned long long a)
{
    uint16_t v;
    memcpy(&v, at(r, a), 2);
    return le16toh(v);
}

static inline void st16(const struct ring *r, unsigned long long a, uint16_t v)
{
    v = htole16(v);
    memcpy(at(r, a), &v, 2);
}

/* vring_need_event (virtio 1.2 §2.7.10.2) */
static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

struct pieces {                 /* guest pieces IN requests wrote, for the DMA report */
    unsigned long long *addr, *len;
    size_t n, cap;
};

static int pieces_add(struct pieces *p, const struct iovec *iov, size_t n, const struct ring *r)
{
    if (p->n + n > p->cap) {
        size_t cap = (p->n + n) * 2;
        unsigned long long *a = realloc(p->addr, cap * sizeof *a);
        if (a == NULL)
            return -1;
        p->addr = a;
        unsigned long long *l = realloc(p->len, cap * sizeof *l);
        if (l == NULL)
            return -1;
        p->len = l;
        p->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        p->addr[p->n] = r->base + (unsigned long long)((uint8_t *)iov[i].iov_base - r->ram);
        p->len[p->n++] = iov[i].iov_len;
    }
    return 0;
}

struct serve_args {
    int fd, event_idx, read_only, nowait;
    unsigned long long capacity, max_bytes, coalesce;
    unsigned max_requests;
};

/* One request at next_avail: STOP_* if it is not served now, -1 if it was (`*used_len`
 * set, status written), -2 out of memory. `iov` has IOV_BATCH entries. */
static int one(const struct ring *r, const struct serve_args *a, uint16_t next_avail,
               unsigned served, struct iovec *iov, struct pieces *dma, uint32_t *head_out,
               uint32_t *used_len)
{
    unsigned long long slot = r->avail + 4 + 2ull * (next_avail % r->size);
    uint16_t head = ld16(r, slot);
    if (head >= r->size)
        return STOP_OTHER;
    uint8_t d[16];
    memcpy(d, at(r, r->desc + 16ull * head), 16);
    uint64_t taddr;
    uint32_t tlen;
    uint16_t flags;
    memcpy(&taddr, d, 8);
    memcpy(&tlen, d + 8, 4);
    memcpy(&flags, d + 12, 2);
    taddr = le64toh(taddr);
    tlen = le32toh(tlen);
    flags = le16toh(flags);
    unsigned count = tlen / 16;
    if (flags != DESC_F_INDIRECT || tlen % 16 || count < 3 || count > IOV_BATCH + 2
            || !in_ram(r, taddr, tlen))
        return STOP_OTHER;
    uint8_t *table = at(r, taddr);
    unsigned long long header = 0, status = 0, data = 0;
    int write_data = -1;        /* the data's direction: 1 device-writable (IN) */
    unsigned n = 0;
    for (unsigned i = 0; i < count; i++) {
        uint64_t addr;
        uint32_t len;
        uint16_t f, next;
        memcpy(&addr, table + 16 * i, 8);
        memcpy(&len, table + 16 * i + 8, 4);
        memcpy(&f, table + 16 * i + 12, 2);
        memcpy(&next, table + 16 * i + 14, 2);
        addr = le64toh(addr);
        len = le32toh(len);
        f = le16toh(f);
        next = le16toh(next);
        int last = i == count - 1;
        if (f & ~(DESC_F_NEXT | DESC_F_WRITE) || !in_ram(r, addr, len)
                || (last ? (f & DESC_F_NEXT) != 0 : (!(f & DESC_F_NEXT) || next != i + 1)))
            return STOP_OTHER;
        int writable = (f & DESC_F_WRITE) != 0;
        if (i == 0) {
            if (writable || len != 16)
                return STOP_OTHER;
            header = addr;
        } else if (last) {
            if (!writable || len != 1)
                return STOP_OTHER;
            status = addr;
        } else {
            if (len == 0 || (write_data >= 0 && writable != write_data))
                return STOP_OTHER;
            write_data = writable;
            iov[n].iov_base = at(r, addr);
            iov[n].iov_len = len;
            n++;
            data += len;
        }
    }
    uint32_t type;
    uint64_t sector;
    memcpy(&type, at(r, header), 4);
    memcpy(&sector, at(r, header + 8), 8);
    type = le32toh(type);
    sector = le64toh(sector);
    if (!((type == T_IN && write_data == 1) || (type == T_OUT && write_data == 0)))
        return STOP_OTHER;
    if (served && (served >= a->max_requests || data + FRAMING > a->coalesce))
        return STOP_LIMIT;
    if (a->nowait && type == T_OUT)
        return STOP_WAIT;       /* writes may wait for the disk: never with nowait */
    int ok = data % SECTOR == 0 && data <= a->max_bytes && sector <= a->capacity / SECTOR
             && data <= a->capacity - sector * SECTOR && !(type == T_OUT && a->read_only);
    if (ok) {
        /* an IN request's pieces are recorded before move() steps over the iovecs */
        if (type == T_IN && pieces_add(dma, iov, n, r) < 0)
            return -2;
        unsigned long long moved;
        int outcome = move(a->fd, iov, n, (long long)(sector * SECTOR), type == T_OUT,
                           a->nowait && type == T_IN, &moved);
        if (a->nowait && type == T_IN && (outcome == MOVE_WOULD_WAIT || outcome == EAGAIN
                                          || outcome == EOPNOTSUPP || outcome == EINVAL)) {
            dma->n -= n;        /* not taken: the I/O thread reads it again, and reports */
            return STOP_WAIT;
        }
        ok = outcome == MOVE_OK;
    }
    *at(r, status) = ok ? S_OK : S_IOERR;
    *head_out = head;
    *used_len = ok && type == T_IN ? (uint32_t)data + 1 : 1;
    return -1;
}

static PyObject *column(const unsigned long long *v, size_t n)
{
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    for (size_t i = 0; t != NULL && i < n; i++) {
        PyObject *x = PyLong_FromUnsignedLongLong(v[i]);
        if (x == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, x);
    }
    return t;
}

static PyObject *serve(PyObject *self, PyObject *args)
{
    struct ring r;
    struct serve_args a;
    Py_buffer ram;
    PyObject *written;
    unsigned next_avail_in, next_used_in;
    (void)self;
    if (!PyArg_ParseTuple(args, "iw*KKKKIIIpKKpKpIO", &a.fd, &ram, &r.base, &r.desc, &r.avail,
                          &r.used, &r.size, &next_avail_in, &next_used_in, &a.event_idx,
                          &a.capacity, &a.max_bytes, &a.read_only, &a.coalesce, &a.nowait,
                          &a.max_requests, &written))
        return NULL;
    r.ram = ram.buf;
    r.len = (unsigned long long)ram.len;
    uint16_t next_avail = (uint16_t)next_avail_in, next_used = (uint16_t)next_used_in;
    uint16_t first_used = next_used;
    unsigned served = 0;
    int stop = STOP_OTHER, interrupt = 0, nomem = 0, failed = 0;
    PyObject *addrs = NULL, *lengths = NULL, *error = NULL;
    struct pieces dma = {NULL, NULL, 0, 0};
    struct iovec *iov = PyMem_Malloc(sizeof(struct iovec) * IOV_BATCH);
    if (iov == NULL) {
        PyBuffer_Release(&ram);
        return PyErr_NoMemory();
    }
    if (r.size == 0 || r.size > 32768 || r.size & (r.size - 1)
            || !in_ram(&r, r.desc, 16ull * r.size) || !in_ram(&r, r.avail, 6 + 2ull * r.size)
            || !in_ram(&r, r.used, 6 + 8ull * r.size))
        goto done;              /* STOP_OTHER: the Python queue reports the layout */
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t avail_idx = ld16(&r, r.avail + 2);
        if (avail_idx == next_avail && a.event_idx) {
            /* as SplitQueue.pop: ask to be notified of the next one, then look again */
            st16(&r, r.used + 4 + 8ull * r.size, next_avail);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            avail_idx = ld16(&r, r.avail + 2);
        }
        if (avail_idx == next_avail) {
            stop = STOP_EMPTY;
            break;
        }
        if ((uint16_t)(avail_idx - next_avail) > r.size) {
            stop = STOP_OTHER;  /* the Python queue reports it */
            break;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint32_t head, used_len;
        int outcome = one(&r, &a, next_avail, served, iov, &dma, &head, &used_len);
        if (outcome == -2) {
            nomem = 1;
            break;
        }
        if (outcome >= 0) {
            stop = outcome;
            break;
        }
        uint8_t elem[8];
        uint32_t h = htole32(head), l = htole32(used_len);
        memcpy(elem, &h, 4);
        memcpy(elem + 4, &l, 4);
        memcpy(at(&r, r.used + 4 + 8ull * (next_used % r.size)), elem, 8);
        next_used++;
        next_avail++;
        served++;
        if (a.event_idx)
            st16(&r, r.used + 4 + 8ull * r.size, next_avail);
    }
    Py_END_ALLOW_THREADS
    /* what IN requests wrote is reported before the driver can see them used */
    failed = nomem;
    if (!failed) {
        addrs = column(dma.addr, dma.n);
        lengths = addrs ? column(dma.len, dma.n) : NULL;
        failed = lengths == NULL;
    }
    error = Py_NewRef(Py_None); /* what `written` raised: returned, not raised */
    if (!failed && dma.n && written != Py_None) {
        PyObject *ok = PyObject_CallFunctionObjArgs(written, addrs, lengths, NULL);
        if (ok == NULL) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb != NULL && value != NULL)
                PyException_SetTraceback(value, tb);
            Py_DECREF(error);
            error = value != NULL ? value : Py_NewRef(Py_None);
            Py_XDECREF(type);
            Py_XDECREF(tb);
        }
        Py_XDECREF(ok);
    }
    if (served) {               /* published even after an error: the data are in place */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        st16(&r, r.used + 2, next_used);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (a.event_idx)
            interrupt = need_event(ld16(&r, r.avail + 4 + 2ull * r.size), next_used, first_used);
        else
            interrupt = !(ld16(&r, r.avail) & AVAIL_F_NO_INTERRUPT);
    }
done:
    PyMem_Free(iov);
    PyBuffer_Release(&ram);
    free(dma.addr);
    free(dma.len);
    if (failed) {
        if (nomem)
            PyErr_NoMemory();
        Py_XDECREF(addrs);
        Py_XDECREF(lengths);
        Py_XDECREF(error);
        return NULL;
    }
    if (addrs == NULL) {        /* the layout was refused: nothing served */
        addrs = PyTuple_New(0);
        lengths = PyTuple_New(0);
        if (addrs == NULL || lengths == NULL) {
            Py_XDECREF(addrs);
            Py_XDECREF(lengths);
            return NULL;
        }
    }
    if (error == NULL)
        error = Py_NewRef(Py_None);
    return Py_BuildValue("(IIIiiNNN)", (unsigned)next_avail, (unsigned)next_used, served,
                         interrupt, stop, addrs, lengths, error);
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS,
     "serve(fd, ram, ram_base, desc, avail, used, size, next_avail, next_used, event_idx, "
     "capacity, max_bytes, read_only, coalesce, nowait, max_requests, written) -> "
     "(next_avail, next_used, served, interrupt, stop, addrs, lengths, error): virtio-blk "
     "requests "
     "of the fast shape taken from the split queue, carried out and completed; "
     "written(addrs, lengths) (or None) hears what reached guest RAM before the used index "
     "shows it (see the module source)."},
    {"transfer", transfer, METH_VARARGS,
     "transfer(fd, offset, ram, ram_base, addrs, lengths, write, nowait) -> bytes moved: "
     "the guest pieces (addrs[i], lengths[i]) inside the RAM buffer `ram` at guest-physical "
     "`ram_base` from (write false) or to (write true) the file at `offset`, all of them "
     "(GIL released during the system calls; see the module source for the errors)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sgio",
    "Scatter/gather transfers between a file and guest RAM (virtio-blk's data path).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sgio(void)
{
    return PyModule_Create(&module);
}
