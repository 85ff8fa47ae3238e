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
 *     Any other ioctl failure raises OSError with the errno. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

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

static PyObject *run(PyObject *self, PyObject *args) {
    int fd, ret, err = 0;
    unsigned long long address;
    PyObject *io_exits;
    struct kvm_run *r;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKO!", &fd, &address, &PyDict_Type, &io_exits))
        return NULL;
    r = (struct kvm_run *)(uintptr_t)address;
    Py_BEGIN_ALLOW_THREADS
    ret = ioctl(fd, KVM_RUN, 0);
    if (ret < 0)
        err = errno;
    Py_END_ALLOW_THREADS
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
        return Py_BuildValue("(iIIK)", KVM_EXIT_IO, (unsigned)r->io.port,
                             (unsigned)(r->io.size | r->io.direction << 8 | r->io.count << 16),
                             (unsigned long long)little_endian(data, r->io.size));
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
     "run(fd, kvm_run_address) -> (exit_reason, a, b, c): KVM_RUN and the exit's fields."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "KVM_RUN and the vCPU kick signal, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
