/* The functions of energy.py in C, over the same buffers, with the same results bit for bit.
 *
 * Built by `make native` (scripts/build_native.py) into build/native/<interpreter>/ and loaded
 * by telephony_agent.native in place of energy.py while both files match the build's stamp.
 * Arrays come through the buffer protocol (no numpy headers): the ring and the cell energies
 * are C-contiguous float64, the reference C-contiguous float32, PCM16 any bytes-like object.
 * Every index is checked against the buffers before anything is read or written; a bad one
 * raises ValueError, as energy.py does. Built with -ffp-contract=off: no fused multiply-add,
 * although with integer samples every product and sum here is exact anyway.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline int32_t
sample_at(const unsigned char *p, Py_ssize_t i)
{
    /* little-endian PCM16, whatever the host's order and the buffer's alignment (the compiler
       makes this one load where the host is little-endian) */
    return (int16_t)(uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
}

/* Samples [from, to) of `p` into out[0 ..) as doubles (floats); their sum of squares. Straight
   loops with no branch inside, which the compiler vectorises (-O3). */
#define CONVERTER(name, type)                                                        \
    static int64_t name(const unsigned char *p, Py_ssize_t from, Py_ssize_t to, type *out) \
    {                                                                                \
        int64_t sum = 0;                                                             \
        for (Py_ssize_t i = from; i < to; i++) {                                     \
            int32_t s = sample_at(p, i);                                             \
            sum += s * s;                                                            \
            out[i - from] = (type)s;                                                 \
        }                                                                            \
        return sum;                                                                  \
    }

CONVERTER(to_doubles, double)
CONVERTER(to_floats, float)

static int64_t
sum_squares(const unsigned char *p, Py_ssize_t from, Py_ssize_t to)
{
    int64_t sum = 0;
    for (Py_ssize_t i = from; i < to; i++) {
        int32_t s = sample_at(p, i);
        sum += s * s;
    }
    return sum;
}

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *format, Py_ssize_t itemsize, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | (format != NULL ? PyBUF_FORMAT : 0) | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    if (format != NULL && (view->itemsize != itemsize || view->format == NULL
                           || strcmp(view->format[0] == '<' || view->format[0] == '=' ? view->format + 1 : view->format,
                                     format) != 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous array of '%s', not '%s'", what, format,
                     view->format != NULL ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int
get_sizes(PyObject *const *args, Py_ssize_t first, Py_ssize_t count, Py_ssize_t *out)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = PyLong_AsSsize_t(args[first + i]);
        if (out[i] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

static int
check_args(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
        return -1;
    }
    return 0;
}

/* ring_write(pcm16, n, ring, at) -> float */
static PyObject *
ring_write(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, at;
    Py_buffer pcm, ring;
    if (check_args("ring_write", nargs, 4) < 0 || get_sizes(args, 1, 1, &n) < 0 || get_sizes(args, 3, 1, &at) < 0) {
        return NULL;
    }
    if (get_buffer(args[0], &pcm, 0, NULL, 1, "pcm16") < 0) {
        return NULL;
    }
    if (get_buffer(args[2], &ring, 1, "d", 8, "ring") < 0) {
        PyBuffer_Release(&pcm);
        return NULL;
    }
    Py_ssize_t w = ring.len / 8;
    if (n < 0 || n > pcm.len / 2 || at < 0 || at >= w) {
        PyBuffer_Release(&pcm);
        PyBuffer_Release(&ring);
        if (at < 0 || at >= w) {
            return PyErr_Format(PyExc_ValueError, "slot %zd outside a ring of %zd", at, w);
        }
        return PyErr_Format(PyExc_ValueError, "%zd samples asked of %zd bytes", n, pcm.len);
    }
    const unsigned char *p = (const unsigned char *)pcm.buf;
    double *r = (double *)ring.buf;
    /* with more samples than the ring holds, only the last `w` are kept: sample i goes to slot
       (at + i) % w, so the first kept one, n - w, goes to (at + n) % w */
    Py_ssize_t first = n > w ? n - w : 0;
    Py_ssize_t slot = first == 0 ? at : (at + n) % w;
    int64_t sum = sum_squares(p, 0, first);
    Py_ssize_t split = first + (n - first < w - slot ? n - first : w - slot);
    sum += to_doubles(p, first, split, r + slot);
    sum += to_doubles(p, split, n, r);
    PyBuffer_Release(&pcm);
    PyBuffer_Release(&ring);
    return PyFloat_FromDouble((double)sum / (double)(n > 1 ? n : 1));
}

/* place(pcm16, n, skip, ref, a, b) -> float */
static PyObject *
place(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n_skip[2], ab[2];
    Py_buffer pcm, ref;
    if (check_args("place", nargs, 6) < 0 || get_sizes(args, 1, 2, n_skip) < 0 || get_sizes(args, 4, 2, ab) < 0) {
        return NULL;
    }
    Py_ssize_t n = n_skip[0], skip = n_skip[1], a = ab[0], b = ab[1];
    if (get_buffer(args[0], &pcm, 0, NULL, 1, "pcm16") < 0) {
        return NULL;
    }
    if (get_buffer(args[3], &ref, 1, "f", 4, "ref") < 0) {
        PyBuffer_Release(&pcm);
        return NULL;
    }
    Py_ssize_t size = ref.len / 4;
    if (n < 0 || n > pcm.len / 2 || skip < 0 || skip > n || a < 0 || a > b || b > size || b - a != n - skip) {
        PyBuffer_Release(&pcm);
        PyBuffer_Release(&ref);
        return PyErr_Format(PyExc_ValueError, "samples %zd..%zd do not fit ref[%zd:%zd] of %zd", skip, n, a, b, size);
    }
    const unsigned char *p = (const unsigned char *)pcm.buf;
    int64_t sum = sum_squares(p, 0, skip) + to_floats(p, skip, n, (float *)ref.buf + a);
    PyBuffer_Release(&pcm);
    PyBuffer_Release(&ref);
    return PyFloat_FromDouble((double)sum / (double)(n > 1 ? n : 1));
}

/* cell_energies(ref, out, i0, i1, cell) -> None */
static PyObject *
cell_energies(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t v[3];
    Py_buffer ref, out;
    if (check_args("cell_energies", nargs, 5) < 0 || get_sizes(args, 2, 3, v) < 0) {
        return NULL;
    }
    Py_ssize_t i0 = v[0], i1 = v[1], cell = v[2];
    if (get_buffer(args[0], &ref, 0, "f", 4, "ref") < 0) {
        return NULL;
    }
    if (get_buffer(args[1], &out, 1, "d", 8, "out") < 0) {
        PyBuffer_Release(&ref);
        return NULL;
    }
    Py_ssize_t cells = out.len / 8, size = ref.len / 4;
    if (cell <= 0 || i0 < 0 || i0 > i1 || i1 > cells || i1 > size / cell) {
        PyBuffer_Release(&ref);
        PyBuffer_Release(&out);
        return PyErr_Format(PyExc_ValueError, "cells %zd..%zd of %zd outside %zd cells of %zd samples", i0, i1, cell,
                            cells, size);
    }
    const float *r = (const float *)ref.buf;
    double *e = (double *)out.buf;
    for (Py_ssize_t i = i0; i < i1; i++) {
        double sum = 0.0;
        for (Py_ssize_t j = i * cell; j < (i + 1) * cell; j++) {
            double s = (double)r[j];
            sum += s * s;
        }
        e[i] = sum;
    }
    PyBuffer_Release(&ref);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* loudest_sum(e, lo, hi, k) -> float */
static PyObject *
loudest_sum(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t v[3];
    Py_buffer buf;
    if (check_args("loudest_sum", nargs, 4) < 0 || get_sizes(args, 1, 3, v) < 0) {
        return NULL;
    }
    Py_ssize_t lo = v[0], hi = v[1], k = v[2];
    if (get_buffer(args[0], &buf, 0, "d", 8, "e") < 0) {
        return NULL;
    }
    Py_ssize_t size = buf.len / 8;
    if (k <= 0 || lo < 0 || lo > hi || hi > size) {
        PyBuffer_Release(&buf);
        return PyErr_Format(PyExc_ValueError, "values %zd..%zd of %zd, runs of %zd", lo, hi, size, k);
    }
    const double *e = (const double *)buf.buf;
    double run = 0.0, best;
    Py_ssize_t end = hi - lo <= k ? hi : lo + k;
    for (Py_ssize_t i = lo; i < end; i++) {
        run += e[i];
    }
    best = run;
    for (Py_ssize_t i = end; i < hi; i++) {
        run += e[i] - e[i - k];
        if (run > best) {
            best = run;
        }
    }
    PyBuffer_Release(&buf);
    return PyFloat_FromDouble(best);
}

static PyMethodDef methods[] = {
    {"ring_write", (PyCFunction)(void (*)(void))ring_write, METH_FASTCALL,
     "ring_write(pcm16, n, ring, at) -> float: see energy.py"},
    {"place", (PyCFunction)(void (*)(void))place, METH_FASTCALL,
     "place(pcm16, n, skip, ref, a, b) -> float: see energy.py"},
    {"cell_energies", (PyCFunction)(void (*)(void))cell_energies, METH_FASTCALL,
     "cell_energies(ref, out, i0, i1, cell) -> None: see energy.py"},
    {"loudest_sum", (PyCFunction)(void (*)(void))loudest_sum, METH_FASTCALL,
     "loudest_sum(e, lo, hi, k) -> float: see energy.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "telephony_agent.telephony.energy",
    .m_doc = "Exact energy arithmetic on PCM16 audio (the compiled energy.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit_energy(void)
{
    return PyModule_Create(&module_def);
}
