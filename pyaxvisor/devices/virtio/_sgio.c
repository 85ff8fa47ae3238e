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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define IOV_BATCH 1024

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
    Py_ssize_t first = 0;
    int err = 0, short_read = 0, would_wait = 0;
    Py_BEGIN_ALLOW_THREADS
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
            err = errno;
            break;
        }
        if (got == 0) {
            short_read = 1;
            break;
        }
        if (nowait && !write && (size_t)got < want) {
            would_wait = 1;
            break;
        }
        done += (unsigned long long)got;
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
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyErr_SetFromErrno(err == EAGAIN ? PyExc_BlockingIOError : PyExc_OSError);
    } else if (would_wait) {
        PyErr_SetString(PyExc_BlockingIOError, "the rest would wait for the disk");
    } else if (short_read) {
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

static PyMethodDef methods[] = {
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
