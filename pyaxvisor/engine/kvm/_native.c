/* The two places where the KVM engine cannot afford Python or ctypes:
 *
 * install_kick(signum)
 *     KVM_RUN returns EINTR when a signal with a handler is delivered to the
 *     thread that runs it. Python installs handlers only from its main thread,
 *     and its handler runs Python code later; a vCPU kick needs neither. This
 *     gives signum an empty C handler, without SA_RESTART, from any thread.
 *
 * run(fd, kvm_run_address, io_exits) -> (exit_reason, a, b, c) or a cached exit
 *     One KVM_RUN with the GIL released, and the exit's fields read from the
 *     shared kvm_run page in the same call (a ctypes ioctl plus structure
 *     reads cost more than the exit itself on a fast host). io_exits is a dict
 *     of ready-made port exits: for a single (not string) port access whose
 *     key value << 32 | (size | direction << 8) << 16 | port (value 0 for an
 *     IN) is in it, the dict's value is returned instead of the tuple:
 *       KVM_EXIT_IO:   (2, port, size | direction << 8 | count << 16, value)
 *                      value = the first size bytes of the data, little-endian
 *       KVM_EXIT_MMIO: (6, phys_addr, len | is_write << 8, value)
 *                      value = the first min(len, 8) bytes of data
 *       EINTR:         (KVM_EXIT_INTR, 0, 0, 0) (signal or immediate_exit)
 *       EAGAIN:        the same: an AP waiting for its SIPI was woken (the
 *                      event changed its state); running it again goes on
 *       otherwise:     (exit_reason, 0, 0, 0)
 *     Any other ioctl failure raises OSError with the errno.
 *
 * run(fd, kvm_run_address, io_exits, ports, widths, counters[, ring])
 *     The same, but port accesses to a port in the dict ports are served here
 *     and KVM_RUN is entered again, so only the exits no device claims come
 *     back. ports[port] = (write, read, offset, vcpu_id): an OUT calls
 *     write(offset, width, value, vcpu_id), an IN calls read(offset, width,
 *     vcpu_id) and hands the guest the result masked to the access size. A
 *     string access (INS/OUTS; KVM batches INS, up to a page per exit) is served
 *     element by element, in order, within the one exit.
 *     widths = (width of 1, 2, 4 bytes), the objects passed as width. counters
 *     is a writable buffer of six unsigned 64-bit integers: [timing, writes
 *     served, reads served, ns in writes, ns in reads, KVM_RUN returns]; the
 *     time is measured (CLOCK_MONOTONIC) only when timing is not 0. An exception
 *     from a device ends the call with that exception.
 *
 *     ring, when not None, is (ring_address, entries, lock): the VM's coalesced
 *     MMIO/PIO ring (struct kvm_coalesced_mmio_ring, mapped at ring_address,
 *     with room for entries records), where KVM queues the writes to a
 *     coalesced port zone instead of exiting (KVM_REGISTER_COALESCED_MMIO with
 *     pio = 1). After every return from KVM_RUN, before the exit is looked at,
 *     the queued writes are handed to their ports' write functions, oldest
 *     first, each counted as a served write: a device sees them in the order
 *     the guest made them, before anything that happened after them. lock (a
 *     threading.Lock, shared by the VM's vCPUs) is held while draining, so two
 *     vCPUs never hand out the same record or overtake each other; a record is
 *     released to KVM (ring->first advanced) only after its write returned.
 *
 * drain(ring, ports, widths, counters)
 *     Only the draining of run, for a caller outside KVM_RUN. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

static void nothing(int signum) { (void)signum; }

static PyObject *install_kick(PyObject *self, PyObject *args) {
    int signum;
    struct sigaction sa;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &signum))
        return NULL;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = nothing;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signum, &sa, NULL) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static uint64_t little_endian(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    if (n > 8)
        n = 8;
    while (n--)
        v = (v << 8) | p[n];
    return v;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

enum { C_TIMING, C_WRITES, C_READS, C_WRITE_NS, C_READ_NS, C_RUNS, C_COUNT };

static PyObject *width_of(PyObject *widths, unsigned size) {
    unsigned slot = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3;
    return slot == 3 ? NULL : PyTuple_GET_ITEM(widths, slot);
}

/* One OUT of value (size bytes) to port: 1 when a device took it, 0 when no device
 * has the port, -1 with an exception set. */
static int serve_write(PyObject *ports, PyObject *widths, uint64_t *ctr, unsigned port,
                       unsigned size, uint64_t value) {
    PyObject *key, *entry, *fn, *res, *argv[4];
    uint64_t t0 = 0;
    key = PyLong_FromUnsignedLong(port);
    if (key == NULL)
        return -1;
    entry = PyDict_GetItemWithError(ports, key); /* borrowed */
    Py_DECREF(key);
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) {
        PyErr_SetString(PyExc_TypeError, "ports values must be (write, read, offset, vcpu_id)");
        return -1;
    }
    fn = PyTuple_GET_ITEM(entry, 0);
    argv[1] = width_of(widths, size);
    if (fn == Py_None || argv[1] == NULL)
        return 0;
    if (ctr[C_TIMING])
        t0 = now_ns();
    argv[0] = PyTuple_GET_ITEM(entry, 2);
    argv[2] = PyLong_FromUnsignedLongLong(value);
    if (argv[2] == NULL)
        return -1;
    argv[3] = PyTuple_GET_ITEM(entry, 3);
    res = PyObject_Vectorcall(fn, argv, 4, NULL);
    Py_DECREF(argv[2]);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    ctr[C_WRITES]++;
    if (ctr[C_TIMING])
        ctr[C_WRITE_NS] += now_ns() - t0;
    return 1;
}

/* Hand every write queued in the coalesced ring to its port, oldest first: 0, or -1
 * with an exception set. ring = (address, entries, lock). */
static int drain_ring(PyObject *ring, PyObject *ports, PyObject *widths, uint64_t *ctr) {
    unsigned long long address;
    unsigned entries;
    PyObject *lock, *res;
    struct kvm_coalesced_mmio_ring *r;
    int ret = 0;
    if (!PyArg_ParseTuple(ring, "KIO", &address, &entries, &lock))
        return -1;
    r = (struct kvm_coalesced_mmio_ring *)(uintptr_t)address;
    if (__atomic_load_n(&r->first, __ATOMIC_RELAXED) ==
        __atomic_load_n(&r->last, __ATOMIC_ACQUIRE))
        return 0; /* nothing queued (a drain in progress still holds its record) */
    res = PyObject_CallMethod(lock, "acquire", NULL); /* waits without the GIL */
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    for (;;) {
        uint32_t first = __atomic_load_n(&r->first, __ATOMIC_RELAXED);
        if (first == __atomic_load_n(&r->last, __ATOMIC_ACQUIRE))
            break;
        if (first >= entries) {
            PyErr_Format(PyExc_RuntimeError, "coalesced ring index %u out of range", first);
            ret = -1;
            break;
        }
        struct kvm_coalesced_mmio *e = &r->coalesced_mmio[first];
        unsigned port = (unsigned)e->phys_addr, size = e->len;
        uint64_t value = little_endian(e->data, size);
        int served;
        if (!e->pio) {
            PyErr_Format(PyExc_RuntimeError, "coalesced MMIO write at 0x%llx: only port "
                         "zones are registered", (unsigned long long)e->phys_addr);
            ret = -1;
            break;
        }
        served = serve_write(ports, widths, ctr, port, size, value);
        __atomic_store_n(&r->first, (first + 1) % entries, __ATOMIC_RELEASE);
        if (served < 0) {
            ret = -1;
            break;
        }
        if (served == 0) {
            PyErr_Format(PyExc_RuntimeError, "a coalesced %u-byte write to port 0x%x has no "
                         "device to go to", size, port);
            ret = -1;
            break;
        }
    }
    if (ret < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        res = PyObject_CallMethod(lock, "release", NULL);
        Py_XDECREF(res);
        PyErr_Restore(type, value, tb);
        return -1;
    }
    res = PyObject_CallMethod(lock, "release", NULL);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* Serve one port exit from the ports table, a string access (INS/OUTS, count > 1)
 * element by element in order: 1 when served, 0 when no device claims it, -1 with
 * an exception set when the device raised. */
static int serve_port(struct kvm_run *r, PyObject *ports, PyObject *widths, uint64_t *ctr) {
    uint8_t *data = (uint8_t *)r + r->io.data_offset;
    unsigned size = r->io.size;
    int out = r->io.direction == KVM_EXIT_IO_OUT;
    PyObject *port, *entry, *fn, *res, *argv[3];
    uint64_t t0 = 0;
    if (width_of(widths, size) == NULL || r->io.count == 0)
        return 0;
    port = PyLong_FromLong(r->io.port);
    if (port == NULL)
        return -1;
    entry = PyDict_GetItemWithError(ports, port);  /* borrowed */
    Py_DECREF(port);
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) {
        PyErr_SetString(PyExc_TypeError, "ports values must be (write, read, offset, vcpu_id)");
        return -1;
    }
    fn = PyTuple_GET_ITEM(entry, out ? 0 : 1);
    if (fn == Py_None)
        return 0;
    if (out) {
        for (uint32_t n = 0; n < r->io.count; n++, data += size)
            if (serve_write(ports, widths, ctr, r->io.port, size, little_endian(data, size)) < 0)
                return -1;
        return 1;
    }
    argv[0] = PyTuple_GET_ITEM(entry, 2);
    argv[1] = width_of(widths, size);
    argv[2] = PyTuple_GET_ITEM(entry, 3);
    for (uint32_t n = 0; n < r->io.count; n++, data += size) {
        unsigned long long v;
        if (ctr[C_TIMING])
            t0 = now_ns();
        res = PyObject_Vectorcall(fn, argv, 3, NULL);
        if (res == NULL)
            return -1;
        v = PyLong_AsUnsignedLongLongMask(res);
        Py_DECREF(res);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        for (unsigned i = 0; i < size; i++)
            data[i] = (uint8_t)(v >> (8 * i));
        ctr[C_READS]++;
        if (ctr[C_TIMING])
            ctr[C_READ_NS] += now_ns() - t0;
    }
    return 1;
}

static int get_counters(PyObject *counters, Py_buffer *buf, uint64_t **ctr) {
    if (PyObject_GetBuffer(counters, buf, PyBUF_WRITABLE) != 0)
        return -1;
    if (buf->len < (Py_ssize_t)(C_COUNT * sizeof(uint64_t))) {
        PyBuffer_Release(buf);
        PyErr_SetString(PyExc_ValueError, "counters must hold 6 unsigned 64-bit integers");
        return -1;
    }
    *ctr = (uint64_t *)buf->buf;
    return 0;
}

static PyObject *drain(PyObject *self, PyObject *args) {
    PyObject *ring, *ports, *widths, *counters;
    Py_buffer ctr_buf = {0};
    uint64_t *ctr;
    int ret;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!O", &PyTuple_Type, &ring, &PyDict_Type, &ports,
                          &PyTuple_Type, &widths, &counters))
        return NULL;
    if (PyTuple_GET_SIZE(widths) != 3) {
        PyErr_SetString(PyExc_TypeError, "widths must be a 3-tuple");
        return NULL;
    }
    if (get_counters(counters, &ctr_buf, &ctr) != 0)
        return NULL;
    ret = drain_ring(ring, ports, widths, ctr);
    PyBuffer_Release(&ctr_buf);
    if (ret < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *run(PyObject *self, PyObject *args) {
    int fd, ret, err = 0;
    unsigned long long address;
    PyObject *io_exits, *ports = Py_None, *widths = Py_None, *counters = Py_None, *result;
    PyObject *ring = Py_None;
    Py_buffer ctr_buf = {0};
    uint64_t no_counters[C_COUNT] = {0}, *ctr = no_counters;
    struct kvm_run *r;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKO!|OOOO", &fd, &address, &PyDict_Type, &io_exits, &ports,
                          &widths, &counters, &ring))
        return NULL;
    if (ports != Py_None) {
        if (!PyDict_Check(ports) || !PyTuple_Check(widths) || PyTuple_GET_SIZE(widths) != 3) {
            PyErr_SetString(PyExc_TypeError, "ports must be a dict and widths a 3-tuple");
            return NULL;
        }
        if (ring != Py_None && !PyTuple_Check(ring)) {
            PyErr_SetString(PyExc_TypeError, "ring must be None or (address, entries, lock)");
            return NULL;
        }
        if (get_counters(counters, &ctr_buf, &ctr) != 0)
            return NULL;
    } else if (ring != Py_None) {
        PyErr_SetString(PyExc_TypeError, "a coalesced ring needs the ports to drain it to");
        return NULL;
    }
    r = (struct kvm_run *)(uintptr_t)address;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        ret = ioctl(fd, KVM_RUN, 0);
        if (ret < 0)
            err = errno;
        Py_END_ALLOW_THREADS
        ctr[C_RUNS]++;
        if (ring != Py_None && drain_ring(ring, ports, widths, ctr) < 0) {
            PyBuffer_Release(&ctr_buf);
            return NULL;
        }
        if (ret < 0 || r->exit_reason != KVM_EXIT_IO || ports == Py_None)
            break;
        ret = serve_port(r, ports, widths, ctr);
        if (ret < 0) {
            PyBuffer_Release(&ctr_buf);
            return NULL;
        }
        if (ret == 0)
            break;
    }
    if (ports != Py_None)
        PyBuffer_Release(&ctr_buf);
    if (ret < 0) {
        if (err == EINTR || err == EAGAIN)
            return Py_BuildValue("(iiii)", KVM_EXIT_INTR, 0, 0, 0);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    switch (r->exit_reason) {
    case KVM_EXIT_IO: {
        const uint8_t *data = (const uint8_t *)r + r->io.data_offset;
        if (r->io.count == 1 && r->io.size <= 4) {
            uint64_t value = r->io.direction == KVM_EXIT_IO_OUT
                                 ? little_endian(data, r->io.size) : 0;
            uint64_t k = value << 32 | (uint64_t)(r->io.size | r->io.direction << 8) << 16
                         | r->io.port;
            PyObject *key = PyLong_FromUnsignedLongLong(k), *hit;
            if (key == NULL)
                return NULL;
            hit = PyDict_GetItemWithError(io_exits, key);
            Py_DECREF(key);
            if (hit != NULL) {
                Py_INCREF(hit);
                return hit;
            }
            if (PyErr_Occurred())
                return NULL;
        }
        result = Py_BuildValue("(iIIK)", KVM_EXIT_IO, (unsigned)r->io.port,
                               (unsigned)(r->io.size | r->io.direction << 8 | r->io.count << 16),
                               (unsigned long long)little_endian(data, r->io.size));
        return result;
    }
    case KVM_EXIT_MMIO:
        return Py_BuildValue("(iKIK)", KVM_EXIT_MMIO, (unsigned long long)r->mmio.phys_addr,
                             (unsigned)(r->mmio.len | r->mmio.is_write << 8),
                             (unsigned long long)little_endian(r->mmio.data, r->mmio.len));
    default:
        return Py_BuildValue("(iiii)", (int)r->exit_reason, 0, 0, 0);
    }
}

static PyMethodDef methods[] = {
    {"install_kick", install_kick, METH_VARARGS,
     "install_kick(signum): give signum an empty handler (no SA_RESTART)."},
    {"run", run, METH_VARARGS,
     "run(fd, kvm_run_address, io_exits[, ports, widths, counters[, ring]]) -> "
     "(exit_reason, a, b, c)\n"
     "or a cached exit: KVM_RUN, port exits to ports served, the coalesced ring drained, "
     "and the exit's fields."},
    {"drain", drain, METH_VARARGS,
     "drain(ring, ports, widths, counters): hand the coalesced ring's writes to ports."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "KVM_RUN and the vCPU kick signal, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
