/* Compiled hot paths of pgchanges: splitting pgoutput row tuples, and a read-only row mapping at C speed.
 *
 * The pure-Python reference of everything here is pgchanges/rowmaps.py (used when this extension is not
 * built); tests/unit/test_rowmaps.py runs both against each other. Why C at all: reading a row's values
 * (``dict(change.new)``, ``change.new[k]``) went through collections.abc.Mapping's Python methods, one call
 * per key, and splitting a tuple ran a Python loop per column; together they were most of a handler's cost
 * per change (bench/results/peers.md, py-spy). Here a row is split and typed on first access in one C loop
 * (calling psycopg's C loaders directly), and every later access is a dict operation.
 *
 * Guarded and json_from_text are converters (bytes -> value) that run without a Python frame per value.
 *
 * Row: constructed by Row(names, converters, data, offset, whole) for a pgoutput TupleData starting at
 * ``offset`` of the buffer ``data`` (``whole``: the tuple must end where ``data`` ends), or by
 * Row.deferred(load, arg) for any other lazily decoded row: ``load(arg)`` must return a dict.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stddef.h>

static PyObject *DecodeError = NULL;      /* pgchanges.errors.DecodeError, set by configure() */
static PyObject *UnchangedToast = NULL;   /* pgchanges.pgoutput.UNCHANGED_TOAST */
static PyObject *MappingABC = NULL;       /* collections.abc.Mapping */
static PyObject *ScanJson = NULL;         /* json.JSONDecoder().scan_once */
static PyObject *JsonLoads = NULL;        /* json.loads */
static PyObject *Zero = NULL;             /* 0, the scanner's start */
static PyObject *FastLoads = NULL;        /* orjson.loads, or None */

typedef struct {
    PyObject_HEAD
    PyObject *names;      /* tuple of str; NULL for a deferred row */
    PyObject *converters; /* tuple of callables; for a deferred row, the load callable */
    PyObject *data;       /* the buffer (tuple row) or the argument of load (deferred); NULL once loaded */
    PyObject *values;     /* the dict, once loaded */
    Py_ssize_t offset;
    int whole;
} RowObject;

static PyTypeObject RowType;

/* -- splitting ------------------------------------------------------------------------------------------ */

static inline int32_t read_i32(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

static int need_configured(void) {
    if (DecodeError == NULL || UnchangedToast == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgchanges._speedups.configure() was not called");
        return -1;
    }
    return 0;
}

static void truncated(Py_ssize_t size) {
    PyErr_Format(DecodeError, "message ends after %zd bytes inside a row", size);
}

/* One pass over a TupleData at ``pos``. Stores its column count in ``*count_out`` (when given) before the
 * first column, then calls ``emit(ctx, index, kind, start, length)`` for each (kind 't'/'b' with the value's
 * bytes, 'n' null, 'u' unchanged TOAST); returns the end position or -1. */
typedef int (*emit_fn)(void *ctx, Py_ssize_t index, int kind, const unsigned char *start, Py_ssize_t length);

static Py_ssize_t walk_tuple(const unsigned char *buf, Py_ssize_t size, Py_ssize_t pos, emit_fn emit, void *ctx,
                             Py_ssize_t *count_out) {
    if (pos < 0 || pos + 2 > size) {
        truncated(size);
        return -1;
    }
    int16_t count = (int16_t)(((unsigned)buf[pos] << 8) | buf[pos + 1]);
    pos += 2;
    if (count < 0) {
        PyErr_Format(DecodeError, "negative column count %d", (int)count);
        return -1;
    }
    if (count_out != NULL) *count_out = count;
    for (Py_ssize_t index = 0; index < count; index++) {
        if (pos >= size) {
            truncated(size);
            return -1;
        }
        int kind = buf[pos++];
        if (kind == 't' || kind == 'b') {
            if (pos + 4 > size) {
                truncated(size);
                return -1;
            }
            int32_t length = read_i32(buf + pos);
            pos += 4;
            if (length < 0 || pos + length > size) {
                PyErr_Format(DecodeError, "column %zd of %d bytes does not fit the message", index, (int)length);
                return -1;
            }
            if (emit != NULL && emit(ctx, index, kind, buf + pos, length) < 0) return -1;
            pos += length;
        } else if (kind == 'n' || kind == 'u') {
            if (emit != NULL && emit(ctx, index, kind, NULL, 0) < 0) return -1;
        } else {
            PyErr_Format(DecodeError, "unknown tuple value kind '%c'", kind);
            return -1;
        }
    }
    return pos;
}

typedef struct {
    PyObject *values; /* list */
    PyObject *binary; /* list of bools, or NULL while no binary value was seen */
    Py_ssize_t count;
} SplitCtx;

static int split_emit(void *vctx, Py_ssize_t index, int kind, const unsigned char *start, Py_ssize_t length) {
    SplitCtx *ctx = vctx;
    PyObject *value;
    if (kind == 'n') {
        value = Py_NewRef(Py_None);
    } else if (kind == 'u') {
        value = Py_NewRef(UnchangedToast);
    } else {
        value = PyBytes_FromStringAndSize((const char *)start, length);
        if (value == NULL) return -1;
    }
    if (kind == 'b') {
        if (ctx->binary == NULL) {
            ctx->binary = PyList_New(ctx->count);
            if (ctx->binary == NULL) {
                Py_DECREF(value);
                return -1;
            }
            for (Py_ssize_t i = 0; i < ctx->count; i++) PyList_SET_ITEM(ctx->binary, i, Py_NewRef(Py_False));
        }
        PyObject *old = PyList_GET_ITEM(ctx->binary, index);
        PyList_SET_ITEM(ctx->binary, index, Py_NewRef(Py_True));
        Py_DECREF(old);
    }
    int rc = PyList_Append(ctx->values, value);
    Py_DECREF(value);
    return rc;
}

/* split_tuple(data, pos) -> (values, binary, end): the values of the TupleData at ``pos`` (bytes, None or
 * UNCHANGED_TOAST), which of them are binary (an empty tuple when none is), and where the tuple ends. */
static PyObject *split_tuple(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "split_tuple(data, pos) takes 2 arguments");
        return NULL;
    }
    if (need_configured() < 0) return NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    SplitCtx ctx = {PyList_New(0), NULL, 0};
    PyObject *result = NULL;
    if (ctx.values == NULL) goto done;
    Py_ssize_t end = walk_tuple(view.buf, view.len, pos, split_emit, &ctx, &ctx.count);
    if (end < 0) goto done;
    PyObject *values = PyList_AsTuple(ctx.values);
    PyObject *binary = ctx.binary != NULL ? PyList_AsTuple(ctx.binary) : PyTuple_New(0);
    if (values != NULL && binary != NULL) result = Py_BuildValue("(NNn)", values, binary, end);
    else {
        Py_XDECREF(values);
        Py_XDECREF(binary);
    }
done:
    Py_XDECREF(ctx.values);
    Py_XDECREF(ctx.binary);
    PyBuffer_Release(&view);
    return result;
}

/* tuple_end(data, pos) -> end: where the TupleData at ``pos`` ends (checked, values not copied). */
static PyObject *tuple_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "tuple_end(data, pos) takes 2 arguments");
        return NULL;
    }
    if (need_configured() < 0) return NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t end = walk_tuple(view.buf, view.len, pos, NULL, NULL, NULL);
    PyBuffer_Release(&view);
    return end < 0 ? NULL : PyLong_FromSsize_t(end);
}

/* -- the row mapping ------------------------------------------------------------------------------------ */

typedef struct {
    PyObject *dict;
    PyObject *names;
    PyObject *converters;
    Py_ssize_t columns;
} TypeCtx;

static int type_emit(void *vctx, Py_ssize_t index, int kind, const unsigned char *start, Py_ssize_t length) {
    TypeCtx *ctx = vctx;
    if (index >= ctx->columns) return 0; /* more values than the relation has columns: as zip(), ignored */
    PyObject *value;
    if (kind == 'n') {
        value = Py_NewRef(Py_None);
    } else if (kind == 'u') {
        value = Py_NewRef(UnchangedToast);
    } else {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)start, length);
        if (raw == NULL) return -1;
        value = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx->converters, index), raw);
        Py_DECREF(raw);
        if (value == NULL) return -1;
    }
    int rc = PyDict_SetItem(ctx->dict, PyTuple_GET_ITEM(ctx->names, index), value);
    Py_DECREF(value);
    return rc;
}

static PyObject *decode_tuple_row(RowObject *self, PyObject *names, PyObject *converters, PyObject *data) {
    if (need_configured() < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t columns = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(converters) < columns) columns = PyTuple_GET_SIZE(converters);
    TypeCtx ctx = {PyDict_New(), names, converters, columns};
    if (ctx.dict == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t end = walk_tuple(view.buf, view.len, self->offset, type_emit, &ctx, NULL);
    if (end >= 0 && self->whole && end != view.len) {
        PyErr_Format(DecodeError, "%zd unexpected trailing bytes", view.len - end);
        end = -1;
    }
    PyBuffer_Release(&view);
    if (end < 0) {
        Py_DECREF(ctx.dict);
        return NULL;
    }
    return ctx.dict;
}

/* The row's dict, decoding it on first use (a borrowed reference, or NULL with an exception set).
 *
 * Decoding runs Python code (converters, a deferred load), and while it does another thread may read the same
 * row (an async handler and a plain one in a worker thread) and finish first: what is used here is held for
 * the duration, and the first dict that is done is kept. */
static PyObject *row_load(RowObject *self) {
    if (self->values != NULL) return self->values;
    PyObject *names = Py_XNewRef(self->names);
    PyObject *converters = Py_NewRef(self->converters);
    PyObject *data = Py_NewRef(self->data);
    PyObject *values;
    if (names != NULL) {
        values = decode_tuple_row(self, names, converters, data);
    } else {
        values = PyObject_CallOneArg(converters, data);
        if (values != NULL && !PyDict_CheckExact(values)) {
            PyErr_Format(PyExc_TypeError, "a deferred row's load() returned %.100s, not a dict",
                         Py_TYPE(values)->tp_name);
            Py_CLEAR(values);
        }
    }
    Py_XDECREF(names);
    Py_DECREF(converters);
    Py_DECREF(data);
    if (values == NULL) return NULL;
    if (self->values != NULL) { /* another thread's decoding finished first */
        Py_DECREF(values);
        return self->values;
    }
    self->values = values;
    Py_CLEAR(self->data); /* the raw form is not needed again: let its buffer go */
    Py_CLEAR(self->converters);
    return values;
}

static PyObject *row_make(PyTypeObject *type, PyObject *names, PyObject *converters, PyObject *data,
                          Py_ssize_t offset, int whole) {
    RowObject *self = (RowObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->names = Py_NewRef(names);
    self->converters = Py_NewRef(converters);
    self->data = Py_NewRef(data);
    self->offset = offset;
    self->whole = whole;
    return (PyObject *)self;
}

static PyObject *row_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *names, *converters, *data;
    Py_ssize_t offset;
    int whole = 0;
    static char *keywords[] = {"names", "converters", "data", "offset", "whole", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!On|p:Row", keywords, &PyTuple_Type, &names, &PyTuple_Type,
                                     &converters, &data, &offset, &whole))
        return NULL;
    return row_make(type, names, converters, data, offset, whole);
}

/* Row(names, converters, data, offset[, whole]) without keywords: the call of every change, so without the
 * keyword parser (vectorcall, as the builtin types are constructed). */
static PyObject *row_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || nargs < 4 || nargs > 5 ||
        !PyTuple_Check(args[0]) || !PyTuple_Check(args[1])) {
        /* anything else (keywords, wrong types): through the keyword parser, which gives the proper error */
        Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        PyObject *tuple = PyTuple_New(nargs);
        PyObject *kwargs = nkw ? PyDict_New() : NULL;
        PyObject *result = NULL;
        if (tuple != NULL && (nkw == 0 || kwargs != NULL)) {
            for (Py_ssize_t i = 0; i < nargs; i++) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
            int ok = 0;
            for (Py_ssize_t i = 0; i < nkw && ok == 0; i++)
                ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]);
            if (ok == 0) result = row_new((PyTypeObject *)type, tuple, kwargs);
        }
        Py_XDECREF(tuple);
        Py_XDECREF(kwargs);
        return result;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[3]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    int whole = nargs == 5 ? PyObject_IsTrue(args[4]) : 0;
    if (whole < 0) return NULL;
    return row_make((PyTypeObject *)type, args[0], args[1], args[2], offset, whole);
}

/* Row.deferred(load, arg): a row whose dict is load(arg), called on first access. */
static PyObject *row_deferred(PyObject *cls, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "Row.deferred(load, arg) takes 2 arguments");
        return NULL;
    }
    RowObject *self = (RowObject *)RowType.tp_alloc(&RowType, 0);
    if (self == NULL) return NULL;
    self->converters = Py_NewRef(args[0]);
    self->data = Py_NewRef(args[1]);
    return (PyObject *)self;
}

/* Row.loaded(values): a row over an existing dict (not copied: the caller hands it over). */
static PyObject *row_loaded(PyObject *cls, PyObject *values) {
    if (!PyDict_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "Row.loaded() takes a dict");
        return NULL;
    }
    RowObject *self = (RowObject *)RowType.tp_alloc(&RowType, 0);
    if (self == NULL) return NULL;
    self->values = Py_NewRef(values);
    return (PyObject *)self;
}

static int row_traverse(RowObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->names);
    Py_VISIT(self->converters);
    Py_VISIT(self->data);
    Py_VISIT(self->values);
    return 0;
}

static int row_clear(RowObject *self) {
    Py_CLEAR(self->names);
    Py_CLEAR(self->converters);
    Py_CLEAR(self->data);
    Py_CLEAR(self->values);
    return 0;
}

static void row_dealloc(RowObject *self) {
    PyObject_GC_UnTrack(self);
    row_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t row_length(RowObject *self) {
    PyObject *values = row_load(self);
    return values == NULL ? -1 : PyDict_GET_SIZE(values);
}

static PyObject *row_subscript(RowObject *self, PyObject *key) {
    PyObject *values = row_load(self);
    if (values == NULL) return NULL;
    PyObject *value = PyDict_GetItemWithError(values, key);
    if (value == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return Py_NewRef(value);
}

static int row_contains(RowObject *self, PyObject *key) {
    PyObject *values = row_load(self);
    return values == NULL ? -1 : PyDict_Contains(values, key);
}

static PyObject *row_iter(RowObject *self) {
    PyObject *values = row_load(self);
    return values == NULL ? NULL : PyObject_GetIter(values);
}

static PyObject *row_view(RowObject *self, const char *name) {
    PyObject *values = row_load(self);
    return values == NULL ? NULL : PyObject_CallMethod(values, name, NULL);
}

static PyObject *row_keys(RowObject *self, PyObject *unused) { return row_view(self, "keys"); }
static PyObject *row_items(RowObject *self, PyObject *unused) { return row_view(self, "items"); }
static PyObject *row_values(RowObject *self, PyObject *unused) { return row_view(self, "values"); }

static PyObject *row_get(RowObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    PyObject *values = row_load(self);
    if (values == NULL) return NULL;
    PyObject *value = PyDict_GetItemWithError(values, args[0]);
    if (value == NULL) {
        if (PyErr_Occurred()) return NULL;
        value = nargs == 2 ? args[1] : Py_None;
    }
    return Py_NewRef(value);
}

static PyObject *row_reduce(RowObject *self, PyObject *unused) {
    /* a row pickles as the plain dict of its values */
    PyObject *values = row_load(self);
    if (values == NULL) return NULL;
    return Py_BuildValue("(O(O))", (PyObject *)&PyDict_Type, values);
}

static PyObject *row_repr(RowObject *self) {
    PyObject *values = row_load(self);
    return values == NULL ? NULL : PyObject_Repr(values);
}

static PyObject *row_richcompare(RowObject *self, PyObject *other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    PyObject *values = row_load(self);
    if (values == NULL) return NULL;
    if (PyObject_TypeCheck(other, &RowType)) {
        PyObject *theirs = row_load((RowObject *)other);
        return theirs == NULL ? NULL : PyObject_RichCompare(values, theirs, op);
    }
    if (PyDict_Check(other)) return PyObject_RichCompare(values, other, op);
    int is_mapping = MappingABC == NULL ? 0 : PyObject_IsInstance(other, MappingABC);
    if (is_mapping < 0) return NULL;
    if (!is_mapping) Py_RETURN_NOTIMPLEMENTED;
    PyObject *copy = PyDict_New();
    if (copy == NULL) return NULL;
    if (PyDict_Merge(copy, other, 1) < 0) {
        Py_DECREF(copy);
        return NULL;
    }
    PyObject *result = PyObject_RichCompare(values, copy, op);
    Py_DECREF(copy);
    return result;
}

static PyMappingMethods row_as_mapping = {
    .mp_length = (lenfunc)row_length,
    .mp_subscript = (binaryfunc)row_subscript,
};

static PySequenceMethods row_as_sequence = {
    .sq_contains = (objobjproc)row_contains,
};

static PyMethodDef row_methods[] = {
    {"keys", (PyCFunction)row_keys, METH_NOARGS, "The column names."},
    {"items", (PyCFunction)row_items, METH_NOARGS, "(column, value) pairs."},
    {"values", (PyCFunction)row_values, METH_NOARGS, "The values."},
    {"get", (PyCFunction)(void (*)(void))row_get, METH_FASTCALL, "The value of a column, or default."},
    {"deferred", (PyCFunction)(void (*)(void))row_deferred, METH_FASTCALL | METH_CLASS,
     "Row.deferred(load, arg): a row whose values are load(arg), called on first access."},
    {"loaded", (PyCFunction)row_loaded, METH_O | METH_CLASS, "Row.loaded(values): a row over a dict."},
    {"__reduce__", (PyCFunction)row_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgchanges._speedups.Row",
    .tp_doc = "A read-only row: column name -> value, decoded on first access.",
    .tp_basicsize = sizeof(RowObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_MAPPING,
    .tp_new = row_new,
    .tp_dealloc = (destructor)row_dealloc,
    .tp_traverse = (traverseproc)row_traverse,
    .tp_clear = (inquiry)row_clear,
    .tp_as_mapping = &row_as_mapping,
    .tp_as_sequence = &row_as_sequence,
    .tp_iter = (getiterfunc)row_iter,
    .tp_repr = (reprfunc)row_repr,
    .tp_richcompare = (richcmpfunc)row_richcompare,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_methods = row_methods,
    .tp_vectorcall = row_vectorcall,
};

/* -- converters: value loaders without a Python frame per value ---------------------------------------- */

/* json_from_text(value): a json/jsonb value's text form (bytes) as json.loads reads it. The scanner of a
 * JSONDecoder is called on the decoded text directly; text that it does not take whole (whitespace around
 * it, malformed) goes to json.loads, which gives the same value or the same error. */
static PyObject *json_from_text(PyObject *module, PyObject *value) {
    if (ScanJson == NULL || JsonLoads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgchanges._speedups.configure() was not called");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8(view.buf, view.len, NULL);
    PyBuffer_Release(&view);
    if (text == NULL) return NULL;
    PyObject *args[2] = {text, Zero};
    PyObject *scanned = PyObject_Vectorcall(ScanJson, args, 2, NULL);
    PyObject *result = NULL;
    if (scanned == NULL) {
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyErr_Clear();
            result = PyObject_CallOneArg(JsonLoads, text);
        }
    } else {
        Py_ssize_t end = PyTuple_Check(scanned) && PyTuple_GET_SIZE(scanned) == 2
                             ? PyLong_AsSsize_t(PyTuple_GET_ITEM(scanned, 1))
                             : -1;
        if (end == PyUnicode_GET_LENGTH(text)) result = Py_NewRef(PyTuple_GET_ITEM(scanned, 0));
        else {
            PyErr_Clear();
            result = PyObject_CallOneArg(JsonLoads, text);
        }
        Py_DECREF(scanned);
    }
    Py_DECREF(text);
    return result;
}

/* Whether ``n`` bytes at ``p`` hold a run of 19 or more digits: a number orjson may not read as json.loads does
 * (it reads integers beyond 64 bits as floats). Runs inside strings count too; they only cost the slow path. */
static int has_long_digit_run(const unsigned char *p, Py_ssize_t n) {
    int run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] >= '0' && p[i] <= '9') {
            if (++run >= 19) return 1;
        } else {
            run = 0;
        }
    }
    return 0;
}

/* jsonb_from_text(value): json_from_text for jsonb, whose text form PostgreSQL writes canonically (valid UTF-8,
 * no duplicate keys), through orjson when it is installed: a third of the scanner's cost. A value with a long
 * digit run, or one orjson refuses (1e400, deep nesting), goes to json_from_text, so the value is always what
 * json.loads gives. */
static PyObject *jsonb_from_text(PyObject *module, PyObject *value) {
    if (FastLoads == NULL || FastLoads == Py_None) return json_from_text(module, value);
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) return NULL;
    int slow = has_long_digit_run(view.buf, view.len);
    PyBuffer_Release(&view);
    if (!slow) {
        PyObject *result = PyObject_CallOneArg(FastLoads, value);
        if (result != NULL) return result;
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
        PyErr_Clear();
    }
    return json_from_text(module, value);
}

/* Guarded(load, fallback, errors): calls load(value); when that raises one of ``errors``, fallback(value).
 * For loaders that can refuse a server's text ('infinity' timestamps), without a Python wrapper frame. */
typedef struct {
    PyObject_HEAD
    PyObject *load;
    PyObject *fallback;
    PyObject *errors;
    vectorcallfunc vectorcall;
} GuardedObject;

static PyObject *guarded_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    GuardedObject *guarded = (GuardedObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        PyErr_SetString(PyExc_TypeError, "a converter takes one value");
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(guarded->load, args[0]);
    if (result != NULL || !PyErr_ExceptionMatches(guarded->errors)) return result;
    PyErr_Clear();
    return PyObject_CallOneArg(guarded->fallback, args[0]);
}

static PyObject *guarded_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *load, *fallback, *errors;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        PyErr_SetString(PyExc_TypeError, "Guarded(load, fallback, errors) takes no keywords");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Guarded", 3, 3, &load, &fallback, &errors)) return NULL;
    GuardedObject *self = (GuardedObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->load = Py_NewRef(load);
    self->fallback = Py_NewRef(fallback);
    self->errors = Py_NewRef(errors);
    self->vectorcall = guarded_vectorcall;
    return (PyObject *)self;
}

static int guarded_traverse(GuardedObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->load);
    Py_VISIT(self->fallback);
    Py_VISIT(self->errors);
    return 0;
}

static int guarded_clear(GuardedObject *self) {
    Py_CLEAR(self->load);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->errors);
    return 0;
}

static void guarded_dealloc(GuardedObject *self) {
    PyObject_GC_UnTrack(self);
    guarded_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject GuardedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgchanges._speedups.Guarded",
    .tp_doc = "Guarded(load, fallback, errors): load(value), or fallback(value) when load raises one of errors.",
    .tp_basicsize = sizeof(GuardedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = guarded_new,
    .tp_dealloc = (destructor)guarded_dealloc,
    .tp_traverse = (traverseproc)guarded_traverse,
    .tp_clear = (inquiry)guarded_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(GuardedObject, vectorcall),
};

/* pg_timestamp(micros): a server timestamp (microseconds since 2000-01-01 UTC) as an aware datetime, as
 * ``PG_EPOCH + timedelta(microseconds=micros)`` gives it (OverflowError outside years 1 to 9999), without the
 * timedelta: once per transaction. The civil date from a day count is H. Hinnant's days_from_civil inverse. */
static PyObject *pg_timestamp(PyObject *module, PyObject *arg) {
    const long long per_day = 86400000000LL;
    long long micros = PyLong_AsLongLong(arg);
    if (micros == -1 && PyErr_Occurred()) return NULL;
    long long days = micros / per_day, rest = micros % per_day;
    if (rest < 0) {
        rest += per_day;
        days -= 1;
    }
    long long z = days + 10957 + 719468; /* days since 0000-03-01 (10957: 1970-01-01 to 2000-01-01) */
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    int day = (int)(doy - (153 * mp + 2) / 5 + 1);
    int month = (int)(mp < 10 ? mp + 3 : mp - 9);
    long long year = yoe + era * 400 + (month <= 2);
    if (year < 1 || year > 9999) {
        PyErr_SetString(PyExc_OverflowError, "date value out of range");
        return NULL;
    }
    long long seconds = rest / 1000000;
    return PyDateTimeAPI->DateTime_FromDateAndTime((int)year, month, day, (int)(seconds / 3600),
                                                   (int)(seconds / 60 % 60), (int)(seconds % 60),
                                                   (int)(rest % 1000000), PyDateTimeAPI->TimeZone_UTC,
                                                   PyDateTimeAPI->DateTimeType);
}

/* configure(DecodeError, UNCHANGED_TOAST, Mapping, scan_once, loads, fast_loads): the objects this module uses. */
static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(DecodeError, UNCHANGED_TOAST, Mapping, scan_once, loads, fast_loads)");
        return NULL;
    }
    Py_XSETREF(DecodeError, Py_NewRef(args[0]));
    Py_XSETREF(UnchangedToast, Py_NewRef(args[1]));
    Py_XSETREF(MappingABC, Py_NewRef(args[2]));
    Py_XSETREF(ScanJson, Py_NewRef(args[3]));
    Py_XSETREF(JsonLoads, Py_NewRef(args[4]));
    Py_XSETREF(FastLoads, Py_NewRef(args[5]));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, NULL},
    {"split_tuple", (PyCFunction)(void (*)(void))split_tuple, METH_FASTCALL,
     "split_tuple(data, pos) -> (values, binary, end)"},
    {"tuple_end", (PyCFunction)(void (*)(void))tuple_end, METH_FASTCALL, "tuple_end(data, pos) -> end"},
    {"json_from_text", (PyCFunction)json_from_text, METH_O, "a json/jsonb value's text form, as json.loads reads it"},
    {"jsonb_from_text", (PyCFunction)jsonb_from_text, METH_O, "json_from_text for jsonb, through orjson if there"},
    {"pg_timestamp", (PyCFunction)pg_timestamp, METH_O, "microseconds since 2000-01-01 UTC as an aware datetime"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pgchanges._speedups", "Compiled hot paths of pgchanges (see pgchanges.rowmaps).",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    if (PyType_Ready(&RowType) < 0 || PyType_Ready(&GuardedType) < 0) return NULL;
    if (Zero == NULL && (Zero = PyLong_FromLong(0)) == NULL) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "Row", (PyObject *)&RowType) < 0 ||
        PyModule_AddObjectRef(module, "Guarded", (PyObject *)&GuardedType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
